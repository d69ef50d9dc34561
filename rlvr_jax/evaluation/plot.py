"""Training and evaluation curves of a run, as PNG files in its workdir.

    python -m rlvr_jax.plot --workdir=/tmp/pi1

Reads `<workdir>/metrics.jsonl` (the training loop's log) and the finished
evaluations under `<workdir>/eval/*/results.json` (`rlvr_jax.evaluate`), and
writes whichever of these it has data for:

  training_curves.png  reward (mean ± std), per-example train accuracy,
                       entropy, KL, response length, pre-clip grad norm
  eval_curves.png      accuracy of each benchmark and their average vs step
                       (checkpoint sweeps solid; in-training eval dashed)
  eval_analysis.png    response length and reflection-word frequency vs step
  eval_subjects.png    accuracy per MATH500 subject (one line each), per
                       level, and per OlympiadBench subfield vs step: the
                       paper's cross-category view (checkpoint sweeps)

Accuracies are stored as fractions and drawn in percent.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import IO

import numpy as np

from rlvr_jax import io as io_lib
from rlvr_jax.io import METRICS_FILE

# (metric key, panel title, y-axis label) of the training figure.
TRAINING_PANELS = (
    ("reward/mean", "Training reward", "mean reward (± std)"),
    ("train_acc/", "Train accuracy per example", "accuracy (%)"),
    ("loss/entropy", "Policy entropy", "entropy (nats / token)"),
    ("loss/kl", "KL to the reference policy", "KL (k3, per token)"),
    ("response_len/mean", "Response length", "mean length (tokens)"),
    ("grad_norm", "Gradient norm (before clipping)", "global L2 norm"),
)


class PlotError(ValueError):
    """Nothing to plot, or an unreadable input; the message names which."""


# ------------------------------------------------------------------ inputs
def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics log that have a step (`rlvr_jax.io.read_log`: a line
    cut short by a crash ends it; a missing file has none).

    Raises:
      PlotError: a malformed line before the last.
    """
    try:
        return [r for r in io_lib.read_log(path) if "step" in r]
    except io_lib.JsonlError as e:
        raise PlotError(str(e)) from e


def series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one numeric metric, in step order, last write wins."""
    points = {}
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            points[int(r["step"])] = float(v)
    steps = np.array(sorted(points), dtype=np.int64)
    return steps, np.array([points[s] for s in steps], dtype=np.float64)


def eval_series(workdir: str) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{source: {benchmark or "average": (steps, accuracy)}} of a run.

    Sources: "checkpoint sweep" (evaluate.py results with a step) and
    "in-training" (`eval/<name>/acc` keys of metrics.jsonl).
    """
    from rlvr_jax.evaluation import results as results_lib

    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    sweep: dict[str, dict[int, float]] = {}
    for r in results_lib.collect_results(workdir):
        step = r["model"]["step"]
        if step is None:
            continue
        for name, m in r["benchmarks"].items():
            sweep.setdefault(name, {})[step] = m["acc"]
        sweep.setdefault("average", {})[step] = r["average"]
    if sweep:
        out["checkpoint sweep"] = {
            name: (np.array(sorted(p)), np.array([p[s] for s in sorted(p)]))
            for name, p in sweep.items()
        }
    rows = read_metrics(os.path.join(workdir, METRICS_FILE))
    keys = sorted(
        {k for r in rows for k in r if k.startswith("eval/") and k.endswith("/acc")}
    )
    training = {k.split("/")[1]: series(rows, k) for k in keys}
    training = {k: v for k, v in training.items() if len(v[0])}
    if training:
        out["in-training"] = training
    return out


def category_series(
    workdir: str,
) -> dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray, int]]]:
    """{(benchmark, category): {value: (steps, accuracy, n_problems)}} of a
    sweep, from the results' `breakdown` (e.g. ("math500", "subject") ->
    {"Algebra": ...}); benchmarks and categories in first-seen order.
    n_problems is the value's count at the last step."""
    from rlvr_jax.evaluation import results as results_lib

    points: dict[tuple[str, str], dict[str, dict[int, tuple[float, int]]]] = {}
    for r in results_lib.collect_results(workdir):
        step = r["model"]["step"]
        if step is None:
            continue
        for name, m in r["benchmarks"].items():
            for field, values in m.get("breakdown", {}).items():
                panel = points.setdefault((name, field), {})
                for value, c in values.items():
                    panel.setdefault(value, {})[step] = (c["acc"], c["n_problems"])
    out = {}
    for key, panel in points.items():
        out[key] = {}
        for value, by_step in panel.items():
            steps = sorted(by_step)
            acc = np.array([by_step[s][0] for s in steps], dtype=np.float64)
            out[key][value] = (np.array(steps), acc, by_step[steps[-1]][1])
    return out


# ------------------------------------------------------------------ figures
def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first use:
    the `[eval]` extra)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _empty(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_training(rows: Sequence[dict], path: str | IO[bytes]) -> bool:
    """Draws the training figure; False (nothing written) when rows are empty."""
    if not rows:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
    for ax, (key, title, ylabel) in zip(axes.flat, TRAINING_PANELS):
        if key == "train_acc/":
            names = sorted(
                {k for r in rows for k in r if k.startswith(key)},
                key=lambda k: (len(k), k),
            )
            if not names:
                _empty(ax, title)
                continue
            # Per-example lines for a few examples (1-shot runs); the mean
            # over a large pool would otherwise be unreadable spaghetti.
            if len(names) <= 8:
                for k in names:
                    s, v = series(rows, k)
                    ax.plot(s, 100 * v, label=f"example {k[len(key) :]}")
                ax.legend(fontsize=8)
            else:
                s, v = mean_over(rows, names)
                ax.plot(s, 100 * v, label=f"mean of {len(names)} examples")
                ax.legend(fontsize=8)
            ax.set_ylim(-2, 102)
        else:
            s, v = series(rows, key)
            if not len(s):
                _empty(ax, title)
                continue
            ax.plot(s, v, color="C0")
            if key == "reward/mean":
                s2, sd = series(rows, "reward/std")
                if len(s2) == len(s) and np.array_equal(s2, s):
                    ax.fill_between(s, v - sd, v + sd, alpha=0.2, color="C0")
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle("Training curves")
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return True


def mean_over(rows, keys) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean at each step of every numeric value of `keys` logged
    then) over metric rows."""
    sums: dict[int, list[float]] = {}
    for r in rows:
        vals = [r[k] for k in keys if isinstance(r.get(k), (int, float))]
        if vals:
            sums.setdefault(int(r["step"]), []).extend(vals)
    steps = np.array(sorted(sums))
    return steps, np.array([np.mean(sums[s]) for s in steps])


def _title(name: str) -> str:
    from rlvr_jax.data import suites

    if name == "average":
        return "Average"
    return suites.REGISTRY[name].title if name in suites.REGISTRY else name


def plot_eval(curves: dict, path: str | IO[bytes]) -> bool:
    """Draws one accuracy panel per benchmark plus the average."""
    if not curves:
        return False
    names = []
    for by_name in curves.values():
        names += [n for n in by_name if n not in names and n != "average"]
    names.append("average")
    plt = pyplot()
    cols = min(4, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(
        nrows,
        cols,
        figsize=(4.5 * cols, 3.6 * nrows),
        squeeze=False,
        constrained_layout=True,
    )
    styles = {
        "checkpoint sweep": dict(ls="-", marker="o"),
        "in-training": dict(ls="--", marker="."),
    }
    for ax, name in zip(axes.flat, names):
        title = _title(name)
        drawn = False
        for source, by_name in curves.items():
            if name in by_name:
                s, v = by_name[name]
                ax.plot(s, 100 * v, label=source, ms=4, **styles.get(source, {}))
                drawn = True
        if not drawn:
            _empty(ax, title)
            continue
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("Evaluation accuracy vs training step")
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return True


def plot_analysis(workdir: str, path: str | IO[bytes]) -> bool:
    """Response length and reflection words per benchmark vs step (sweeps)."""
    from rlvr_jax.evaluation import results as results_lib

    results = [
        r
        for r in results_lib.collect_results(workdir)
        if r["model"]["step"] is not None
    ]
    if not results:
        return False
    steps = np.array([r["model"]["step"] for r in results])
    names = []
    for r in results:
        names += [n for n in r["benchmarks"] if n not in names]
    words: list[str] = []  # in the configured order, as first seen
    for r in results:
        for m in r["benchmarks"].values():
            for k in m["analysis"]:
                word = k[len("reflection/") :]
                if k.startswith("reflection/") and "_frac" not in k:
                    words += [word] if word not in words else []

    def per_step(name, key):
        return np.array(
            [
                r["benchmarks"].get(name, {}).get("analysis", {}).get(key, np.nan)
                for r in results
            ],
            dtype=np.float64,
        )

    plt = pyplot()
    fig, (ax_len, ax_ref) = plt.subplots(
        1, 2, figsize=(13, 4.5), constrained_layout=True
    )
    for name in names:
        ax_len.plot(
            steps,
            per_step(name, "response_len/mean"),
            marker="o",
            ms=4,
            label=_title(name),
        )
    ax_len.set_title("Mean response length")
    ax_len.set_xlabel("training step")
    ax_len.set_ylabel("tokens")
    ax_len.legend(fontsize=8)
    ax_len.grid(alpha=0.3)
    for word in words:
        # Pooled over benchmarks, weighted by their generation counts.
        counts = np.array(
            [
                [
                    r["benchmarks"][n]["n_generations"] if n in r["benchmarks"] else 0
                    for n in names
                ]
                for r in results
            ],
            np.float64,
        )
        vals = np.stack([per_step(n, f"reflection/{word}") for n in names], axis=1)
        pooled = np.nansum(vals * counts, axis=1) / np.maximum(counts.sum(axis=1), 1)
        ax_ref.plot(steps, pooled, marker="o", ms=4, label=f'"{word}"')
    ax_ref.set_title("Reflection words (all benchmarks)")
    ax_ref.set_xlabel("training step")
    ax_ref.set_ylabel("occurrences per response")
    if words:
        ax_ref.legend(fontsize=8)
    ax_ref.grid(alpha=0.3)
    fig.suptitle("Response analysis vs training step")
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return True


def plot_categories(curves: dict, path: str | IO[bytes]) -> bool:
    """Draws one panel per (benchmark, category) of `category_series`, one
    accuracy line per value; False (nothing written) when there are none."""
    if not curves:
        return False
    plt = pyplot()
    cols = min(3, len(curves))
    nrows = -(-len(curves) // cols)
    fig, axes = plt.subplots(
        nrows,
        cols,
        figsize=(5.5 * cols, 4.2 * nrows),
        squeeze=False,
        constrained_layout=True,
    )
    for ax, ((name, field), lines) in zip(axes.flat, curves.items()):
        for value, (steps, acc, n) in lines.items():
            label = f"level {value}" if field == "level" else value
            ax.plot(steps, 100 * acc, marker="o", ms=4, label=f"{label} ({n})")
        ax.set_title(f"{_title(name)} by {field}")
        ax.set_xlabel("training step")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="(problems)", title_fontsize=7)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    fig.suptitle("Accuracy by category vs training step")
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return True


def plot_all(workdir: str) -> list[str]:
    """Writes every figure there is data for; returns their paths.

    Raises:
      PlotError: the workdir is missing or holds nothing to plot.
    """
    if not os.path.isdir(workdir):
        raise PlotError(f"workdir not found: {workdir}")
    written = []
    targets = (
        (
            "training_curves.png",
            lambda p: plot_training(
                read_metrics(os.path.join(workdir, METRICS_FILE)), p
            ),
        ),
        ("eval_curves.png", lambda p: plot_eval(eval_series(workdir), p)),
        ("eval_analysis.png", lambda p: plot_analysis(workdir, p)),
        ("eval_subjects.png", lambda p: plot_categories(category_series(workdir), p)),
    )
    for name, draw in targets:
        png = io.BytesIO()
        if draw(png):
            path = os.path.join(workdir, name)
            io_lib.write_atomic(path, png.getvalue())
            written.append(path)
    if not written:
        raise PlotError(
            f"{workdir}: nothing to plot (no {METRICS_FILE} rows and no evaluation "
            "results with a step under eval/)"
        )
    return written


def main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    try:
        for path in plot_all(flags.FLAGS.workdir):
            print(f"wrote {path}")
    except PlotError as e:
        raise SystemExit(f"error: {e}") from None


def cli() -> None:
    """The command line (`python -m rlvr_jax.plot`)."""
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "training workdir (metrics.jsonl, eval/)")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)


if __name__ == "__main__":
    cli()

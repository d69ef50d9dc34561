"""The laptop lab's report: every run's curves on one figure, and a table.

    python -m rlvr_jax.lab --out=/tmp/rlvr_jax_lab/report \
        --runs='full pool=/tmp/rlvr_jax_lab/full_s*,1-shot top=/tmp/rlvr_jax_lab/top_s*'

`--runs` is comma-separated `LABEL=GLOB`; the workdirs a glob matches are the
seeds of one run. Writes into `--out`:

  lab_curves.png  train accuracy on the run's training examples (the mean of
                  its `train_acc/*`), held-out accuracy of each domain
                  (`eval/<domain>/acc`) and their mean, against steps: one
                  line per run (mean over seeds), a band for the mean's 95%
                  interval
  lab_table.md    per run: held-out accuracy before training and at the last
                  step (mean ± the half-width of its 95% Student t interval
                  over seeds), per domain and averaged, the change of the
                  average from before training with its 95% interval, the
                  best step's average, and when the training accuracy first
                  reached 90% ("saturation")

With `--against=LABEL`, each run's last-step average is also compared with
that run's (Welch's 95% interval of the difference), the test a control
asks for: does the run beat the control by more than the seeds' noise?

Everything is read from the runs' metrics.jsonl; nothing is recomputed.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Sequence

import numpy as np
from scipy import stats

from rlvr_jax import io as io_lib
from rlvr_jax.evaluation import plot
from rlvr_jax.io import METRICS_FILE

SATURATED = 0.9  # train accuracy counted as saturated


def parse_runs(spec: str) -> dict[str, list[str]]:
    """{label: sorted workdirs} from `LABEL=GLOB,...`.

    Raises:
      plot.PlotError: a malformed item, or a glob matching no workdir.
    """
    runs = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise plot.PlotError(f"--runs item {item!r} is not LABEL=GLOB")
        label, pattern = item.split("=", 1)
        dirs = sorted(d for d in glob.glob(pattern) if os.path.isdir(d))
        if not dirs:
            raise plot.PlotError(f"--runs {label!r}: no workdir matches {pattern!r}")
        runs[label] = dirs
    return runs


def domains_of(rows: Sequence[dict]) -> list[str]:
    """The eval set names of a run, in the order its log lists them."""
    names = {}
    for r in rows:
        for k in r:
            if k.startswith("eval/") and k.endswith("/acc"):
                names.setdefault(k[len("eval/") : -len("/acc")], None)
    return list(names)


def curves(rows: Sequence[dict], domains: Sequence[str]) -> dict[str, tuple]:
    """{panel: (steps, values)}: "train", each domain, and "mean" of domains."""
    out = {}
    train_keys = sorted({k for r in rows for k in r if k.startswith("train_acc/")})
    if train_keys:
        out["train"] = plot.mean_over(rows, train_keys)
    per = {d: plot.series(rows, f"eval/{d}/acc") for d in domains}
    out.update(per)
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in per.values())))
    if common:
        by_step = [{int(s): v for s, v in zip(*per[d])} for d in domains]
        out["mean"] = (
            np.array(common),
            np.array([np.mean([b[s] for b in by_step]) for s in common]),
        )
    return out


def _stack(per_seed: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """(steps every seed has, values [seeds, steps])."""
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in per_seed)))
    values = [[dict(zip(s.tolist(), v))[c] for c in common] for s, v in per_seed]
    return np.array(common), np.array(values)


def summarize(runs: dict[str, list[str]]) -> dict[str, dict]:
    """Per label: domains, {panel: (steps, values [seeds, steps])}, seeds."""
    out = {}
    for label, dirs in runs.items():
        logs = [plot.read_metrics(os.path.join(d, METRICS_FILE)) for d in dirs]
        domains = domains_of(logs[0])
        per_seed = [curves(rows, domains) for rows in logs]
        panels = {
            p: _stack([c[p] for c in per_seed])
            for p in per_seed[0]
            if all(p in c and len(c[p][0]) for c in per_seed)
        }
        out[label] = {"domains": domains, "panels": panels, "seeds": len(dirs)}
    return out


def half_width(values: np.ndarray, confidence: float = 0.95) -> float:
    """Half-width of the mean's Student t interval over seeds (nan for one)."""
    n = len(values)
    if n < 2:
        return float("nan")
    t = stats.t.ppf(0.5 + confidence / 2, n - 1)
    return float(t * np.std(values, ddof=1) / np.sqrt(n))


def welch(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple:
    """(mean(a) - mean(b), half-width) of Welch's interval for the difference.

    Two runs' seeds are independent samples of unequal spread; with no
    spread in either, the difference is exact (half-width 0).
    """
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff = float(np.mean(a) - np.mean(b))
    if va + vb == 0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, float(stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(va + vb))


def _pm(values: np.ndarray) -> str:
    if len(values) < 2:
        return f"{100 * values.mean():.1f}"
    return f"{100 * values.mean():.1f} ± {100 * half_width(values):.1f}"


def _interval(mean: float, half: float) -> str:
    """A change in points with its 95% interval, e.g. "-1.8 [-2.3, -1.3]"."""
    if not np.isfinite(half):
        return f"{100 * mean:+.1f}"
    lo, hi = 100 * (mean - half), 100 * (mean + half)
    return f"{100 * mean:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def table(summary: dict[str, dict], against: str | None = None) -> str:
    """The markdown table (accuracies in percent, mean ± 95% half-width over
    seeds; changes with their 95% intervals in brackets).

    Raises:
      plot.PlotError: `against` names no run of `summary`.
    """
    if against is not None and against not in summary:
        raise plot.PlotError(f"--against {against!r} is not a run label")
    domains = next(iter(summary.values()))["domains"]
    head = (
        ["run", "seeds", "mean @0"]
        + [f"{d} @end" for d in domains]
        + ["mean @end", "change of mean"]
        + ([f"vs {against} @end"] if against else [])
        + ["best mean (step)", "train acc ≥90% at step"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in summary.items():
        p = s["panels"]
        steps, mean_v = p["mean"]
        cells = [label, str(s["seeds"]), _pm(mean_v[:, 0])]
        cells += [_pm(p[d][1][:, -1]) if d in p else "–" for d in domains]
        cells.append(_pm(mean_v[:, -1]))
        change = mean_v[:, -1] - mean_v[:, 0]
        cells.append(_interval(change.mean(), half_width(change)))
        if against:
            other = summary[against]["panels"]["mean"][1][:, -1]
            if label == against:
                cells.append("–")
            elif len(other) < 2 or len(mean_v) < 2:
                cells.append(_interval(mean_v[:, -1].mean() - other.mean(), np.nan))
            else:
                cells.append(_interval(*welch(mean_v[:, -1], other)))
        best = int(np.argmax(mean_v.mean(0)))
        cells.append(f"{100 * mean_v.mean(0)[best]:.1f} ({steps[best]})")
        if "train" in p:
            t_steps, t_v = p["train"]
            hit = [
                str(t_steps[np.argmax(v >= SATURATED)])
                if (v >= SATURATED).any()
                else "never"
                for v in t_v
            ]
            cells.append(", ".join(hit))
        else:
            cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(summary: dict[str, dict], path) -> None:
    """lab_curves.png: train accuracy, each domain, the domain mean."""
    plt = plot.pyplot()
    domains = next(iter(summary.values()))["domains"]
    panels = ["train", *domains, "mean"]
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for i, (label, s) in enumerate(summary.items()):
            if panel not in s["panels"]:
                continue
            steps, v = s["panels"][panel]
            # Ten colours; past them the line style changes, so no two runs
            # look alike.
            color, style = f"C{i % 10}", ("-", "--", ":")[i // 10 % 3]
            ax.plot(steps, 100 * v.mean(0), color=color, ls=style, label=label)
            if len(v) > 1:
                half = np.array([half_width(col) for col in v.T])
                ax.fill_between(
                    steps,
                    100 * (v.mean(0) - half),
                    100 * (v.mean(0) + half),
                    color=color,
                    alpha=0.15,
                )
        title = {
            "train": "train accuracy (training examples)",
            "mean": "held-out accuracy, mean of domains",
        }
        ax.set_title(title.get(panel, f"held-out accuracy: {panel}"))
        ax.set_xlabel("RL step")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write_report(
    runs: dict[str, list[str]], out: str, against: str | None = None
) -> list[str]:
    """Writes lab_curves.png and lab_table.md into `out`; returns their paths."""
    summary = summarize(runs)
    text = table(summary, against)
    os.makedirs(out, exist_ok=True)
    png = io.BytesIO()
    figure(summary, png)
    paths = [os.path.join(out, "lab_curves.png"), os.path.join(out, "lab_table.md")]
    io_lib.write_atomic(paths[0], png.getvalue())
    io_lib.write_atomic(paths[1], text)
    return paths


def main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    try:
        paths = write_report(
            parse_runs(flags.FLAGS.runs), flags.FLAGS.out, flags.FLAGS.against
        )
    except plot.PlotError as e:
        raise SystemExit(f"error: {e}") from None
    print(open(paths[1]).read(), end="")
    for p in paths:
        print(f"wrote {p}")


def cli() -> None:
    """The command line (`python -m rlvr_jax.lab`)."""
    from absl import app, flags

    flags.DEFINE_string("runs", None, "LABEL=GLOB,... (a glob's workdirs: seeds)")
    flags.DEFINE_string("out", None, "directory for lab_curves.png, lab_table.md")
    flags.DEFINE_string(
        "against", None, "a run LABEL every run's last-step mean is compared with"
    )
    flags.mark_flags_as_required(["runs", "out"])
    app.run(main)


if __name__ == "__main__":
    cli()

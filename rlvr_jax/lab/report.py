"""The laptop lab's report: every run's curves on one figure, and a table.

    python -m rlvr_jax.lab --out=/tmp/rlvr_jax_lab/report \
        --runs='full pool=/tmp/rlvr_jax_lab/full_s*,1-shot top=/tmp/rlvr_jax_lab/top_s*'

`--runs` is comma-separated `LABEL=GLOB`; the workdirs a glob matches are the
seeds of one run. Writes into `--out`:

  lab_curves.png  train accuracy on the run's training examples (the mean of
                  its `train_acc/*`), held-out accuracy of each domain
                  (`eval/<domain>/acc`) and their mean, against steps: one
                  line per run (mean over seeds), a band from the lowest to
                  the highest seed
  lab_table.md    per run: held-out accuracy before training and at the last
                  step (mean ± std over seeds), per domain and averaged, the
                  best step's average, and when the training accuracy first
                  reached 90% ("saturation")

Everything is read from the runs' metrics.jsonl; nothing is recomputed.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Sequence

import numpy as np

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


def _pm(values: np.ndarray) -> str:
    return f"{100 * values.mean():.1f} ± {100 * values.std():.1f}"


def table(summary: dict[str, dict]) -> str:
    """The markdown table (accuracies in percent, mean ± std over seeds)."""
    domains = next(iter(summary.values()))["domains"]
    head = (
        ["run", "seeds", "mean @0"]
        + [f"{d} @end" for d in domains]
        + ["mean @end", "best mean (step)", "train acc ≥90% at step"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in summary.items():
        p = s["panels"]
        steps, mean_v = p["mean"]
        cells = [label, str(s["seeds"]), _pm(mean_v[:, 0])]
        cells += [_pm(p[d][1][:, -1]) if d in p else "–" for d in domains]
        cells.append(_pm(mean_v[:, -1]))
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
            ax.plot(steps, 100 * v.mean(0), color=f"C{i}", label=label)
            if len(v) > 1:
                ax.fill_between(
                    steps, 100 * v.min(0), 100 * v.max(0), color=f"C{i}", alpha=0.15
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


def write_report(runs: dict[str, list[str]], out: str) -> list[str]:
    """Writes lab_curves.png and lab_table.md into `out`; returns their paths."""
    summary = summarize(runs)
    os.makedirs(out, exist_ok=True)
    png = io.BytesIO()
    figure(summary, png)
    paths = [os.path.join(out, "lab_curves.png"), os.path.join(out, "lab_table.md")]
    io_lib.write_atomic(paths[0], png.getvalue())
    io_lib.write_atomic(paths[1], table(summary))
    return paths


def main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    try:
        paths = write_report(parse_runs(flags.FLAGS.runs), flags.FLAGS.out)
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
    flags.mark_flags_as_required(["runs", "out"])
    app.run(main)


if __name__ == "__main__":
    cli()

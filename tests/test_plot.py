"""Plots: training and evaluation curves written as PNGs in the workdir."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rlvr_jax import checkpoint
from rlvr_jax.evaluation import plot
from rlvr_jax.evaluation import results as results_lib

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


_STEPS = tuple(range(0, 60, 10))


def _metrics(workdir, steps=_STEPS):
    rows = []
    for s in steps:
        rows.append(
            {
                "step": s,
                "reward/mean": 0.1 + s / 100,
                "reward/std": 0.05,
                "train_acc/124": min(1.0, s / 40),
                "loss/entropy": 0.5 - s / 200,
                "loss/kl": s / 1e4,
                "loss/pg": 0.0,
                "response_len/mean": 300 + s,
                "grad_norm": 0.2,
            }
        )
        if s % 20 == 0:
            rows.append({"step": s, "eval/math500/acc": 0.3 + s / 200})
    with open(os.path.join(workdir, plot.METRICS_FILE), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write('{"step": 60, "reward/me')  # a line cut short by a crash


def _eval_result(workdir, step, acc):
    recs = [
        {
            "group": g,
            "correct": g < round(acc * 4),
            "length": 100 + step,
            "finish_reason": "stop",
            "response": "Let me recheck. " * (step // 20),
        }
        for g in range(4)
    ]
    # MATH500's problems carry categories: 2 Algebra then 2 Geometry, levels.
    subjects = ("Algebra", "Algebra", "Geometry", "Geometry")
    math = [dict(r, subject=subjects[g], level=g + 1) for g, r in enumerate(recs)]
    per = {}
    for name, rows in (("math500", math), ("aime24", recs)):
        m = results_lib.benchmark_metrics(rows)
        m["protocol"] = "greedy"
        per[name] = m
    source = checkpoint.ModelSource("orbax", workdir, step)
    results = {
        "model": source.describe(),
        "settings": {},
        "benchmarks": per,
        "average": results_lib.average(per),
    }
    results_lib.write_results(os.path.join(workdir, "eval", source.tag), results)


def test_series_reads_last_write_and_stops_at_a_cut_line(tmp_path):
    _metrics(str(tmp_path))
    rows = plot.read_metrics(str(tmp_path / plot.METRICS_FILE))
    steps, values = plot.series(rows, "reward/mean")
    assert steps.tolist() == [0, 10, 20, 30, 40, 50]
    np.testing.assert_allclose(values, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    steps, values = plot.series(rows, "eval/math500/acc")
    assert steps.tolist() == [0, 20, 40]


def test_all_figures_are_written(tmp_path):
    workdir = str(tmp_path)
    _metrics(workdir)
    for step, acc in ((0, 0.25), (20, 0.5), (40, 0.75)):
        _eval_result(workdir, step, acc)
    written = plot.plot_all(workdir)
    names = sorted(os.path.basename(p) for p in written)
    assert names == [
        "eval_analysis.png",
        "eval_curves.png",
        "eval_subjects.png",
        "training_curves.png",
    ]
    for p in written:
        width, height = _png_size(p)
        assert width >= 800 and height >= 300
        assert os.path.getsize(p) > 10_000  # drawn curves and text, not blank
    assert not [f for f in os.listdir(workdir) if f.endswith(".tmp.png")]


def test_eval_series_merges_sweep_and_in_training(tmp_path):
    workdir = str(tmp_path)
    _metrics(workdir)
    _eval_result(workdir, 0, 0.25)
    _eval_result(workdir, 20, 0.5)
    curves = plot.eval_series(workdir)
    assert set(curves) == {"checkpoint sweep", "in-training"}
    steps, acc = curves["checkpoint sweep"]["average"]
    assert steps.tolist() == [0, 20] and acc.tolist() == [0.25, 0.5]
    steps, acc = curves["in-training"]["math500"]
    assert steps.tolist() == [0, 20, 40]
    # Per category: the first problems (Algebra) are right first.
    by = plot.category_series(workdir)
    assert list(by) == [("math500", "subject"), ("math500", "level")]
    steps, acc, n = by["math500", "subject"]["Algebra"]
    assert (steps.tolist(), acc.tolist(), n) == ([0, 20], [0.5, 1.0], 2)
    assert by["math500", "subject"]["Geometry"][1].tolist() == [0.0, 0.0]
    assert list(by["math500", "level"]) == ["1", "2", "3", "4"]


def test_only_training_metrics_gives_only_the_training_figure(tmp_path):
    _metrics(str(tmp_path))
    (tmp_path / plot.METRICS_FILE).write_text(
        "".join(json.dumps({"step": s, "reward/mean": 0.5}) + "\n" for s in range(3))
    )
    written = plot.plot_all(str(tmp_path))
    assert [os.path.basename(p) for p in written] == ["training_curves.png"]


def test_nothing_to_plot_is_a_clear_error(tmp_path):
    with pytest.raises(plot.PlotError, match="nothing to plot"):
        plot.plot_all(str(tmp_path))
    with pytest.raises(plot.PlotError, match="workdir not found"):
        plot.plot_all(str(tmp_path / "missing"))

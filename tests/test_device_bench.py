"""benchmarks/device.py in its tiny CPU mode: the files it writes, its
figures' consistency, and its time guard.

The whole tiny run compiles about 30 programs (the measured ones and the
planner's), minutes on a shared 2-core host: those tests are slow. The
default suite checks the guard (a spent budget runs nothing), the length
mix and the FLOP count, which compile nothing.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest

from benchmarks import device
from rlvr_jax import build
from rlvr_jax.planning import calibration, programs, report


def _numbers(tree, where=""):
    """(path, value) of every number in a JSON tree (booleans are not)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield where, tree


def _read(out):
    with open(os.path.join(out, "device.json")) as f:
        return json.load(f)


def _as_json(data):
    return json.loads(json.dumps(data))


# ------------------------------------------------------------ default suite
def test_a_spent_budget_skips_every_part_and_writes_no_calibration(tmp_path):
    data = device.main(["--tiny", f"--out={tmp_path}", "--budget_s=0"])
    assert _as_json(data) == _read(tmp_path)
    assert set(data["skipped"]) == {"setup", "decode", "sampling", "plan", "mix"}
    assert "time guard" in data["skipped"]["setup"]
    assert not data["parts"]
    assert not os.path.exists(tmp_path / "calibration.json")


def test_response_lengths_come_from_the_mix_or_its_lognormal(tmp_path):
    lengths, source = device.response_lengths(16, 8, 3072, seed=0)
    assert "qwen25_math_responses.json" in source
    assert lengths.shape == (128,) and lengths.min() >= 1 and lengths.max() <= 3072
    with open(device.MIX_FILE) as f:
        groups = [tuple(g[:8]) for g in json.load(f)["groups"]]
    # Whole groups of the file, one per prompt.
    assert all(tuple(g) in groups for g in lengths.reshape(16, 8).tolist())

    missing = str(tmp_path / "absent.json")
    drawn, source = device.response_lengths(4000, 1, 3072, seed=0, path=missing)
    assert "lognormal" in source
    assert abs(np.median(drawn) - device.MIX_MEDIAN) < 0.05 * device.MIX_MEDIAN
    assert abs(np.percentile(drawn, 99) - device.MIX_P99) < 0.15 * device.MIX_P99
    # The tiny mode's cap scales the mix.
    small, _ = device.response_lengths(16, 8, 24, seed=0)
    assert small.max() <= 24 and np.median(small) < np.median(lengths)


def test_model_flops_is_the_planners_formula():
    config = device.reduced_config(device.TINY, tiny=True)
    model = device.model_for(config, tiny=True)
    run = build.plan_run(config, jax.devices(), 0, model)
    chip = device.TINY_CHIP
    step = programs.Program(
        name="train_step",
        calls=1,
        arguments=0,
        outputs=0,
        alias=0,
        temp=0,
        seconds=1.0,
    )
    planned = report.learner_mfu(run, step, chip) * run.mesh.size
    planned *= chip.bf16_flops_per_s
    widest = [run.shapes.learner_width] * run.shapes.responses
    assert math.isclose(device.model_flops(model, widest), planned, rel_tol=1e-9)


def test_the_summary_table_shows_each_part_and_what_was_skipped():
    row = {"slots": 16, "step_s": 0.004, "tokens_per_s": 4000.0}
    row.update(roofline_s=0.001, efficiency=0.25)
    data = {
        "devices": 1,
        "device_kind": "NVIDIA H100 80GB HBM3",
        "jax": "0.10.2",
        "parts": {
            "decode": {"rows": [row]},
            "rl_step": {
                "sampling": {"seconds": 9.0},
                "update": {"seconds": 2.0, "mfu": 0.3, "mfu_real_tokens": 0.25},
            },
            "plan": {
                "parts": {
                    "sampling": {"roofline_s": 1.5},
                    "update": {"roofline_s": 0.8},
                },
                "predicted_peak_bytes": 30e9,
                "measured_peak_bytes": 33e9,
            },
        },
        "skipped": {"mix": "time guard"},
        "notes": [],
    }
    text = device.summary(data)
    assert "25.0%" in text  # the decode row's efficiency
    assert "6.00×" in text and "2.50×" in text  # measured / roofline
    assert "logprobs" in text  # a part neither measured nor planned: dashes
    assert "predicted 30.00 GB, measured 33.00 GB" in text
    assert "skipped mix: time guard" in text


# --------------------------------------------------------------- slow suite
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device")
    data = device.main(["--tiny", f"--out={out}"])
    return out, data


@pytest.mark.slow
def test_the_tiny_run_writes_every_part_and_a_calibration(tiny_run):
    out, data = tiny_run
    assert _as_json(data) == _read(out)
    assert not data["skipped"], data["skipped"]
    assert set(data["parts"]) == {
        "setup",
        "decode",
        "rl_step",
        "plan",
        "calibration",
        "mix",
    }
    cal = calibration.read(str(out / "calibration.json"))
    assert cal.chip == device.TINY_CHIP.name
    assert set(cal.kinds) == {"sampling", "logprobs", "update"}
    parts = data["parts"]["plan"]["parts"]
    for kind, (measured, roofline) in cal.kinds.items():
        assert measured == parts[kind]["measured_s"]
        assert roofline == parts[kind]["roofline_s"]
        assert math.isclose(cal.factor(kind), parts[kind]["measured_over_roofline"])


@pytest.mark.slow
def test_every_figure_is_finite_and_positive(tiny_run):
    _, data = tiny_run
    figures = list(_numbers(data["parts"]))
    assert len(figures) > 50
    bad = [(p, v) for p, v in figures if not (math.isfinite(v) and v > 0)]
    assert not bad, bad


@pytest.mark.slow
def test_decode_efficiency_is_roofline_over_measured(tiny_run):
    _, data = tiny_run
    bandwidth = data["chip"]["hbm_bytes_per_s"]
    rows = data["parts"]["decode"]["rows"]
    assert rows
    for row in rows:
        roofline = row["least_hbm_bytes"] / bandwidth
        assert math.isclose(row["roofline_s"], roofline, rel_tol=1e-12)
        assert math.isclose(row["efficiency"], roofline / row["step_s"], rel_tol=1e-12)
        assert math.isclose(row["tokens_per_s"], row["slots"] / row["step_s"])


@pytest.mark.slow
def test_the_rl_step_ran_the_planned_worst_case(tiny_run):
    _, data = tiny_run
    step = data["parts"]["rl_step"]
    sampling = step["sampling"]
    assert sampling["full_length_responses"] == sampling["responses"]
    assert step["learner_batch"]["planned_shape_matches"]
    update, chip = step["update"], data["chip"]
    mfu = update["model_flops"] / (
        update["seconds"] * data["devices"] * chip["bf16_flops_per_s"]
    )
    assert math.isclose(update["mfu"], mfu, rel_tol=1e-9)


@pytest.mark.slow
def test_a_short_budget_skips_the_parts_it_cannot_fit(tmp_path):
    data = device.main(["--tiny", f"--out={tmp_path}", "--budget_s=1"])
    assert _as_json(data) == _read(tmp_path)
    assert data["skipped"]
    # Each part either ran or was skipped, never both; no plan, no calibration.
    assert not set(data["skipped"]) & set(data["parts"])
    assert "plan" in data["skipped"]
    assert not os.path.exists(tmp_path / "calibration.json")

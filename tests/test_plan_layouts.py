"""The planner's decode-layout comparison (`planning.layouts`) on a tiny
model compiled for a 4-chip v5e topology: each layout's decode step per
chip, its collectives, and the table the CLI prints.
"""

from __future__ import annotations

import importlib.util

import pytest

from rlvr_jax import build
from rlvr_jax.planning import chips, layouts, programs, report
from rlvr_jax.planning import compile as compile_lib
from tests.test_plan import MODEL, TOPOLOGY, tiny_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="needs libtpu (the [tpu] extra) to compile for TPU topologies",
)


def _run(layout: str):
    config = tiny_config(**{"rollout.decode_mesh": layout})
    return build.plan_run(config, chips.topology_devices(TOPOLOGY), 8, MODEL)


def test_a_tensor_layout_runs_the_sampler_on_its_own_mesh():
    run = _run("tensor=2")
    assert run.decode_tensor == 2
    assert dict(run.sampler_mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 2}
    assert list(run.sampler_mesh.devices.flat) == list(run.mesh.devices.flat)
    # The rollout's rows split over the decode mesh's data axis.
    assert run.shapes.sample.slots % 2 == 0
    data = _run("data")
    assert data.decode_tensor == 1 and data.sampler_mesh is data.mesh


@pytest.fixture(scope="module")
def compared():
    """The tiny run's decode step under each layout (~30 s of compiles)."""
    run = _run("data")
    chip = chips.CHIPS["v5e"]
    width = programs.mean_fill(run, run.settings)
    return (
        compile_lib.cost_run(run),
        chip,
        layouts.compare(compile_lib.cost_run(run), chip, width),
    )


def test_layouts_split_the_weights_and_add_collectives(compared):
    _, _, found = compared
    by_name = {x.name: x for x in found}
    assert list(by_name) == ["data", "tensor=2", "tensor=4"]
    assert all(not x.error for x in found)
    data, t2, t4 = by_name["data"], by_name["tensor=2"], by_name["tensor=4"]
    assert data.used and not t2.used
    # The MLP and head split over T: each chip holds less of the weights.
    assert data.weight_bytes > t2.weight_bytes > t4.weight_bytes
    # Megatron's two all-reduces per layer (attention stays replicated, so
    # the MLP's down projection and the head's logits) appear only when split.
    assert t2.collectives.count > data.collectives.count
    assert t2.collectives.count >= MODEL.n_layers
    assert t2.seconds > 0 and t2.step_bytes > 0


def test_the_plan_prints_the_decode_layouts_table(compared):
    run, chip, found = compared
    step = programs.Program("sample.decode_step", 0, 0, 0, 0, 0, layouts=found)
    plan = report.Plan(
        topology=TOPOLOGY,
        chip=chip,
        chips=4,
        shapes=run.shapes,
        steps=1,
        hbm_bytes_per_chip=chip.hbm_bytes,
        programs=[step],
        phases={"sample": 1_000_000_000},
        times={},
        run_seconds=0.0,
        notes=[],
        overrides={},
        largest={},
        mfu=0.0,
        decode_efficiency=0.0,
    )
    lines = report.format_layouts(plan)
    text = "\n".join(lines)
    assert "decode layouts" in text
    rows = [line.split() for line in lines if line.startswith("  ")]
    assert [r[0] for r in rows[:3]] == ["data", "tensor=2", "tensor=4"]
    assert "the run's" in next(line for line in lines if line.startswith("  data"))
    best = layouts.fastest_fitting(found, 1_000_000_000, chip.hbm_bytes)
    assert best is not None and "fastest that fits" in next(
        line for line in lines if line.startswith(f"  {best.name} ")
    )
    assert "decode layouts" in report.format_plan(plan)

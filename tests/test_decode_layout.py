"""Decode layouts (`rollout.decode_mesh`): the sampler on a tensor split of
the learner's devices samples what the data-parallel replicas sample; the
layout choice and its config errors; the collective counter against a
hand-counted program.

Runs on the 8 CPU devices of tests/conftest.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from rlvr_jax import base_config as base
from rlvr_jax import build
from rlvr_jax import sharding as SH
from rlvr_jax.model import params as PR
from rlvr_jax.planning import collectives
from rlvr_jax.rollout import engine, sampling


@pytest.fixture(scope="module")
def placed_model(hf_tiny_dir):
    """(config, params on an fsdp=8 learner mesh, the mesh)."""
    config, params = PR.load_hf(hf_tiny_dir, np.float32, compute_dtype="float32")
    mesh = SH.make_mesh(data=1, fsdp=-1)
    return config, jax.device_put(params, SH.tree_shardings(params, mesh)), mesh


def _config(layout: str, **changes):
    c = base.base_config()
    base.make_tiny(c)
    c.rollout.decode_mesh = layout
    for dotted, value in changes.items():
        section, field = dotted.split(".")
        c[section][field] = value
    return c


def _rollout(placed_model, layout: str, temperature: float):
    model, params, mesh = placed_model
    dmesh, tensor, placement = build.decode_layout(_config(layout), mesh, model)
    prompts = [
        np.random.default_rng(i).integers(1, model.vocab_size, n).tolist()
        for i, n in enumerate((5, 9, 3, 7))
    ]
    settings = sampling.SamplingSettings(
        max_new_tokens=10,
        temperature=temperature,
        eos_ids=(7,),
        n=2,
        cache_dtype="float32",
    )
    roll = engine.rollout(
        model,
        params,
        prompts,
        settings,
        jax.random.key(1),
        slots=8,
        mesh=dmesh,
        decode_sharding=placement,
    )
    return roll, tensor, placement


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tensor_layouts_sample_what_the_data_layout_samples(placed_model, temperature):
    want, tensor, _ = _rollout(placed_model, "data", temperature)
    assert tensor == 1
    for layout, t in (("tensor=2", 2), ("tensor=4", 4)):
        roll, tensor, placement = _rollout(placed_model, layout, temperature)
        assert tensor == t
        layer = placement.layers[0]
        assert layer.gate_up_od.spec == P("tensor", None)
        assert layer.down_df.spec == P(None, "tensor")
        assert layer.qkv_od.spec == P() and placement.head_vd.spec == P("tensor", None)
        np.testing.assert_array_equal(roll.tokens, want.tokens)
        np.testing.assert_array_equal(roll.lengths, want.lengths)
        np.testing.assert_allclose(roll.logprobs, want.logprobs, atol=1e-5)


def test_prepare_moves_the_weights_to_the_decode_mesh(placed_model):
    model, params, mesh = placed_model
    dmesh, _, placement = build.decode_layout(_config("tensor=4"), mesh, model)
    assert dict(dmesh.shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    # Same devices in the same order: the prefill mixes both meshes' arrays.
    assert list(dmesh.devices.flat) == list(mesh.devices.flat)
    weights = sampling.prepare(model, params, decode_sharding=placement)
    gate_up = weights.decode.layers[0].gate_up_od
    assert gate_up.sharding.mesh.shape == dmesh.shape
    assert gate_up.addressable_shards[0].data.shape == (2 * model.mlp_dim // 4, 64)


@pytest.mark.parametrize(
    "value,match",
    [
        ("tensor=3", r"^rollout.decode_mesh='tensor=3': expected one of"),
        ("model", r"^rollout.decode_mesh='model': expected one of"),
        ("tensor", r"^rollout.decode_mesh='tensor': expected one of"),
    ],
)
def test_bad_layout_names_are_one_line(value, match):
    with pytest.raises(ValueError, match=match) as e:
        build.check_config(_config(value))
    assert "\n" not in str(e.value)


def test_tensor_must_divide_the_devices_and_fit_a_host():
    devices = jax.devices()
    six = SH.make_mesh(data=-1, devices=devices[:6])
    with pytest.raises(ValueError, match=r"tensor=4 does not divide the 6 devices"):
        SH.decode_mesh(six, 4)

    class Remote:  # a device of a second host
        def __init__(self, device, process):
            self.device, self.process_index = device, process

    two_hosts = np.array(
        [Remote(d, i // 4) for i, d in enumerate(devices)], dtype=object
    )
    fake = type("FakeMesh", (), {"devices": two_hosts.reshape(1, 8, 1)})()
    with pytest.raises(ValueError, match=r"tensor=8 is more than the 4 devices of"):
        SH.decode_mesh(fake, 8)


def test_sharded_decode_weights_clash_with_a_tensor_layout():
    bad = _config("tensor=2", **{"rollout.decode_weights": "sharded"})
    with pytest.raises(ValueError, match=r"^rollout.decode_weights='sharded' with"):
        build.check_config(bad)


def test_auto_keeps_data_while_a_copy_fits_a_quarter_then_splits(placed_model):
    model, _, mesh = placed_model
    config = _config(
        "auto",
        **{
            "rollout.chunk_size": 8,
            "rollout.max_new_tokens": 8,
            "data.prompt_buckets": (16,),
        },
    )
    copy = build.decode_weight_bytes(model, 1)
    assert build.decode_layout(config, mesh, model, 4 * copy)[1] == 1
    # Over a quarter: the smallest T whose split copy fits a quarter and
    # whose copy and (T-fold) cache fit half.
    t2 = build.decode_weight_bytes(model, 2)
    cache2 = build.sampler_cache_bytes(config, model, mesh, 2)
    hbm = max(4 * t2, 2 * (t2 + cache2))
    assert hbm < 4 * copy
    assert build.decode_layout(config, mesh, model, hbm)[1] == 2
    # Unknown memory (CPU): data.
    assert build.decode_layout(config, mesh, model)[1] == 1


def test_collectives_counts_a_hand_counted_all_reduce():
    """x [16, 64] @ w [64, 32] with the contraction split over 4 devices: one
    all-reduce of the [16, 32] fp32 partial sums (2,048 bytes) per call."""
    mesh = jax.make_mesh(
        (4,), ("k",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4]
    )
    x = jax.ShapeDtypeStruct(
        (16, 64), jnp.float32, sharding=NamedSharding(mesh, P(None, "k"))
    )
    w = jax.ShapeDtypeStruct(
        (64, 32), jnp.float32, sharding=NamedSharding(mesh, P("k"))
    )
    fn = jax.jit(lambda x, w: x @ w, out_shardings=NamedSharding(mesh, P()))
    counted = collectives.count(fn.lower(x, w).compile().as_text(), 4)
    assert counted.count == 1 and dict(counted.by_kind) == {"all-reduce": 1}
    assert counted.operand_bytes == 16 * 32 * 4
    assert counted.wire_bytes == pytest.approx(2 * 3 / 4 * 16 * 32 * 4)
    assert counted.seconds(1e9, 1e-5) == pytest.approx(3072 / 1e9 + 1e-5)


def test_collectives_reads_loops_groups_and_async_forms():
    text = """HloModule m

%body (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %p = (s32[], f32[8,4]) parameter(0)
  %x = f32[8,4]{1,0} get-tuple-element(%p), index=1
  %ag = f32[8,8]{1,0} all-gather(%x), replica_groups=[4,2]<=[8], dimensions={1}
  %s = f32[2,4]{1,0} collective-permute-start(%x), source_target_pairs={{0,1}}
  ROOT %t = (s32[], f32[8,4]) tuple(%i, %x)
}

%cond (p: (s32[], f32[8,4])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[8,4]) -> f32[8,4] {
  %a = f32[8,4]{1,0} parameter(0)
  %ar = bf16[8,4]{1,0} all-reduce-start(%a), replica_groups={{0,1,2,3},{4,5,6,7}}
  %ard = bf16[8,4]{1,0} all-reduce-done(%ar)
  %w = (s32[], f32[8,4]) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[8,4]{1,0} copy(%a)
}
"""
    counted = collectives.count(text, 8)
    assert dict(counted.by_kind) == {
        "all-gather": 3,
        "all-reduce": 1,
        "collective-permute": 3,
    }
    assert counted.count == 7
    assert counted.operand_bytes == 128 + 3 * 128 + 3 * 128
    want_wire = 2 * 3 / 4 * 128 + 3 * (1 * 128) + 3 * 128
    assert counted.wire_bytes == pytest.approx(want_wire)

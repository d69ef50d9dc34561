"""Mesh construction, partition rules with fallback, batch placement, sharded init."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from rlvr_jax import grpo
from rlvr_jax import sharding as S
from rlvr_jax.learner import optimizer
from rlvr_jax.model import decoder as M
from tests.learner_fixtures import fast_jit


def test_make_mesh_sizes_and_axes():
    mesh = S.make_mesh(data=-1, fsdp=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert dict(S.make_mesh(data=2, fsdp=-1, tensor=2).shape)["fsdp"] == 2
    assert dict(S.make_mesh(devices=jax.devices()[:1]).shape)["data"] == 1
    with pytest.raises(ValueError):
        S.make_mesh(data=3, fsdp=2)
    with pytest.raises(ValueError):
        S.make_mesh(data=-1, fsdp=-1)


def test_fit_spec_drops_axes_that_do_not_divide():
    mesh = S.make_mesh(data=2, fsdp=2, tensor=2)
    assert S.fit_spec(P("tensor", "fsdp"), (64, 32), mesh) == P("tensor", "fsdp")
    assert S.fit_spec(P("tensor", "fsdp"), (63, 32), mesh) == P(None, "fsdp")
    assert S.fit_spec(P(("data", "fsdp")), (6, 3), mesh) == P(None)
    assert S.fit_spec(P(None, "fsdp"), (), mesh) == P()  # scalar counter


def test_param_rules_on_an_odd_tiny_model():
    config = M.ModelConfig.tiny(
        vocab_size=63, d_model=36, n_heads=3, n_kv_heads=1, head_dim=16, mlp_dim=50
    )
    mesh = S.make_mesh(data=2, fsdp=2, tensor=2)
    specs = jax.tree.map(
        lambda s: s.spec, S.tree_shardings(M.abstract_params(config), mesh)
    )
    assert specs["embed"]["embedding"] == P(None, "fsdp")  # 63 rows: odd
    attn, mlp = specs["layers"]["attn"], specs["layers"]["mlp"]
    assert attn["q_kernel"] == P(None, "fsdp", None, None)  # 3 heads
    assert attn["q_bias"] == P(None, None, None)
    assert attn["o_kernel"] == P(None, None, None, "fsdp")
    assert mlp["gate_kernel"] == P(None, "fsdp", "tensor")
    assert mlp["down_kernel"] == P(None, "tensor", "fsdp")
    assert specs["layers"]["input_norm"]["scale"] == P()
    assert specs["final_norm"]["scale"] == P()


def test_untied_head_rule():
    config = M.ModelConfig.tiny(tie_embeddings=False)
    mesh = S.make_mesh(data=1, fsdp=4, tensor=2)
    shardings = S.tree_shardings(M.abstract_params(config), mesh)
    assert shardings["lm_head"].spec == P("fsdp", "tensor")
    assert shardings["embed"]["embedding"].spec == P("tensor", "fsdp")


def test_optimizer_state_is_sharded_like_params():
    config = M.ModelConfig.tiny()
    mesh = S.make_mesh(data=2, fsdp=4)
    tx = optimizer.adamw(1e-3, decay_norms_and_biases=False)
    shardings = grpo.state_shardings(config, tx, mesh)
    param_specs = jax.tree.map(lambda s: s.spec, shardings.params)
    adam = shardings.opt_state[1]
    # chain(clip, masked adamw): the Adam moments sit inside the adamw state.
    leaves = jax.tree_util.tree_leaves_with_path(adam)
    mu_specs = {
        S.path_str(p).split("mu/", 1)[1]: s.spec
        for p, s in leaves
        if "/mu/" in "/" + S.path_str(p)
    }
    flat_params = {
        S.path_str(p): s for p, s in jax.tree_util.tree_leaves_with_path(param_specs)
    }
    assert mu_specs == flat_params
    counts = [s.spec for p, s in leaves if S.path_str(p).endswith("count")]
    assert counts and all(spec == P() for spec in counts)
    assert shardings.step.spec == P() and shardings.skipped.spec == P()


def test_shard_batch_splits_rows_and_round_trips():
    mesh = S.make_mesh(data=2, fsdp=4)
    rng = np.random.default_rng(0)
    batch = dict(
        tokens=rng.integers(0, 9, (16, 5)).astype(np.int32),
        advantages=rng.normal(size=16).astype(np.float32),
    )
    placed = S.shard_batch(mesh, batch)
    assert placed["tokens"].sharding.spec == P(("data", "fsdp"))
    assert placed["tokens"].addressable_shards[0].data.shape == (2, 5)
    assert placed["advantages"].addressable_shards[0].data.shape == (2,)
    for key in batch:
        np.testing.assert_array_equal(np.asarray(placed[key]), batch[key])
    with pytest.raises(ValueError, match="pad the batch"):
        S.shard_batch(mesh, dict(tokens=np.zeros((12, 5))))


def test_bytes_per_device():
    mesh = S.make_mesh(data=2, fsdp=4)
    tree = dict(
        w=jax.ShapeDtypeStruct(
            (8, 6), np.float32, sharding=jax.NamedSharding(mesh, P("fsdp"))
        ),
        b=jax.ShapeDtypeStruct((6,), np.int8, sharding=jax.NamedSharding(mesh, P())),
    )
    assert S.bytes_per_device(tree) == 2 * 6 * 4 + 6


def test_init_train_state_from_rng_is_sharded_and_matches_init_params():
    config = M.ModelConfig.tiny(dtype="float32")
    mesh = S.make_mesh(data=2, fsdp=4)
    tx = optimizer.adamw(1e-3)
    key = jax.random.key(7)
    state = grpo.init_train_state(config, tx, mesh, rng=key)
    emb = state.params["embed"]["embedding"]
    assert emb.sharding.spec == P("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (512, 16)
    want = fast_jit(M.init_params, static_argnums=0)(config, key)
    for got, ref in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
        # Same random bits; the normal sampler's erf_inv may differ by an ulp
        # between differently compiled programs.
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-9
        )
    assert int(state.step) == 0 and int(state.skipped) == 0


def test_to_memory_moves_arrays_between_memories_and_keeps_shardings():
    mesh = S.make_mesh(data=2, fsdp=4)
    sharding = jax.NamedSharding(mesh, P("fsdp", "data"))
    x = jax.device_put(np.arange(64.0).reshape(8, 8), sharding)
    tree = {"w": x, "b": jax.device_put(np.ones(4), S.replicated(mesh))}
    host = S.to_memory(tree, "pinned_host")
    back = S.to_memory(host, "device")
    for moved, kind in ((host, "pinned_host"), (back, "device")):
        for name in tree:
            assert moved[name].sharding.memory_kind == kind
            assert moved[name].sharding.spec == tree[name].sharding.spec
            np.testing.assert_array_equal(moved[name], tree[name])
    with pytest.raises(ValueError, match="no 'hbm' memory"):
        S.to_memory(tree, "hbm")

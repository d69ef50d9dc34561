"""The TPU flash-attention kernel (rlvr_jax/model/flash.py) against the einsum path.

The kernel runs in Pallas's TPU interpret mode on CPU: the same kernel code,
its tiles and masks, executed by the interpreter. Outputs and gradients at
every real query are compared with `model.dot_attention`; then the learner's
gradients with the kernel, under a mesh (each chip's rows through
`shard_map`), with the einsum learner's.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

from rlvr_jax import base_config as base
from rlvr_jax import build, grpo
from rlvr_jax import sharding as S
from rlvr_jax.model import decoder as M
from rlvr_jax.model import flash
from rlvr_jax.planning import chips

# Not a multiple of the kernel's 128-column tiles: the padding path runs.
T = 200


def _segments():
    """Row 0 packed (left padding, two sequences, trailing padding); row 1
    one left-padded sequence, as an unpacked learner row (queries all in
    segment 1, keys valid or not)."""
    packed = np.array([0] * 5 + [1] * 90 + [2] * 80 + [0] * 25)
    valid = np.array([0] * 30 + [1] * 170)
    key_seg_bs = jnp.asarray(np.stack([packed, valid]), jnp.int32)
    q_seg_bt = jnp.asarray(np.stack([packed, np.ones(T, int)]), jnp.int32)
    return q_seg_bt, key_seg_bs


def test_kernel_equals_dot_attention_values_and_gradients():
    k, g, h = 2, 2, 128
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, T, k, g, h), jnp.float32)
    kk = jax.random.normal(keys[1], (2, T, k, h), jnp.float32)
    v = jax.random.normal(keys[2], (2, T, k, h), jnp.float32)
    w = jax.random.normal(keys[3], (2, T, k, g, h), jnp.float32)
    q_seg_bt, key_seg_bs = _segments()
    real = (key_seg_bs != 0)[:, :, None, None, None]

    def einsum(q, kk, v):
        return M.dot_attention(
            q, kk, v, q_seg_bt, key_seg_bs, jnp.arange(T), jnp.float32
        )

    def kernel(q, kk, v):
        return flash.attention(q, kk, v, key_seg_bs)

    def loss(fn):  # only real queries are ever scored
        return lambda *a: jnp.sum(jnp.where(real, w * fn(*a), 0.0))

    with pltpu.force_tpu_interpret_mode():
        out = jax.jit(kernel)(q, kk, v)
        grads = jax.jit(jax.grad(loss(kernel), argnums=(0, 1, 2)))(q, kk, v)
    want = einsum(q, kk, v)
    want_grads = jax.grad(loss(einsum), argnums=(0, 1, 2))(q, kk, v)
    assert out.shape == want.shape and out.dtype == want.dtype
    np.testing.assert_allclose(
        np.where(real, out, 0), np.where(real, want, 0), atol=2e-5, rtol=1e-5
    )
    for got, ref in zip(grads, want_grads):
        np.testing.assert_allclose(got, ref, atol=5e-5, rtol=1e-4)
    # The comparison is not vacuous: every gradient is substantial.
    assert all(float(jnp.abs(r).max()) > 0.1 for r in want_grads)


def test_tiles_divide_every_width():
    """Major tiles hold the whole row up to MAJOR_MAX columns (each operand
    read once); any multiple of 128 gets tiles that divide it."""
    for t in (128, 384, 640, 4096, 4224, 8192, 12288):
        sizes = flash.block_sizes(t)
        for major, minor in (
            (sizes.block_k_major, sizes.block_k),
            (sizes.block_q_major_dkv, sizes.block_q_dkv),
            (sizes.block_k_major_dq, sizes.block_k_dq),
        ):
            assert t % major == 0 and major % minor == 0 and minor % 128 == 0
        if t <= flash.MAJOR_MAX:
            assert sizes.block_k_major == sizes.block_q_major_dkv == t


def test_kernel_rejects_a_head_dim_it_cannot_tile():
    x = jnp.zeros((1, 128, 1, 1, 64))
    with pytest.raises(ValueError, match="multiple of 128"):
        flash.attention(x, x[:, :, :, 0], x[:, :, :, 0], jnp.ones((1, 128), int))


@pytest.mark.slow  # interpret mode, a whole learner: ~20 s
def test_learner_gradients_with_the_kernel_equal_the_einsum_learner(monkeypatch):
    """A sharded train pass (4 chips: rows over fsdp, heads over tensor):
    the kernel runs on each chip's share under `shard_map`, and loss,
    metrics and every gradient equal the einsum learner's."""
    model = M.ModelConfig.tiny(
        n_layers=1, vocab_size=64, d_model=64, n_heads=2, n_kv_heads=1, head_dim=128
    ).replace(dtype="float32", attention_block=32)  # einsum path: 4 blocks
    params = M.init_params(model, jax.random.key(1))
    rng = np.random.default_rng(0)
    rows, t = 8, 128
    tokens = rng.integers(1, 64, (rows, t))
    mask = np.ones((rows, t), bool)
    for row, pad in enumerate(rng.integers(0, 40, rows)):
        mask[row, :pad] = False  # left padding
    loss_mask = mask.copy()
    loss_mask[:, :64] = False  # responses after the prompt
    batch = {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "mask": jnp.asarray(mask),
        "loss_mask": jnp.asarray(loss_mask),
        "advantages": jnp.asarray(rng.normal(size=rows), jnp.float32),
    }
    mesh = S.make_mesh(data=1, fsdp=2, tensor=2, devices=jax.devices()[:4])
    # No remat: the interpreter's callbacks are effects, which a checkpoint
    # cannot partially evaluate. The remat'd kernel is compiled for TPU in
    # tests/test_plan.py (every tiny plan's learner uses it).
    learner = grpo.LearnerConfig(
        temperature=0.6,
        micro_batch_size=4,
        kl_coef=0.0,
        entropy_coef=0.001,
        remat=False,
    )

    def grads(kernel):
        with pltpu.force_tpu_interpret_mode():
            return grpo.loss_and_grads(
                params,
                batch,
                model_config=model,
                learner_config=learner.replace(attention_kernel=kernel),
                mesh=mesh,
            )

    mapped = []  # what the kernel was mapped over: each chip its share
    shard_map = jax.shard_map

    def spy(f, *, mesh, in_specs, out_specs, **kwargs):
        mapped.append(out_specs)
        return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **kwargs)

    monkeypatch.setattr(jax, "shard_map", spy)
    (g_xla, m_xla), (g_flash, m_flash) = grads("xla"), grads("flash")
    assert mapped and set(mapped) == {P(S.BATCH_AXES, "tensor")}
    for key in m_xla:
        np.testing.assert_allclose(m_flash[key], m_xla[key], rtol=1e-5, atol=1e-6)
    flat_xla = jax.tree_util.tree_leaves_with_path(g_xla)
    for (path, a), b in zip(flat_xla, jax.tree.leaves(g_flash)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=str(path))
    assert float(jnp.abs(g_xla["layers"]["attn"]["q_kernel"]).max()) > 0


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="needs libtpu (the [tpu] extra) for TPU topology devices",
)
def test_auto_picks_the_kernel_where_its_tiles_are_whole_rows():
    """v5e and v6e, a head dim of 128s, learner rows of up to 4,096: the
    kernel; v4 and v5p (too little on-chip memory per kernel), a CPU, a
    narrow head or wider rows: the einsums."""
    config = base.base_config()  # π1: rows of 1,024 + 3,072 columns
    mesh = {
        t: S.make_mesh(devices=chips.topology_devices(t))
        for t in ("v5e:2x2", "v6e:2x2", "v4:2x2x1", "v5p:2x2x1")
    }
    cpu = S.make_mesh()
    wide, narrow = (M.ModelConfig.tiny(head_dim=h) for h in (128, 16))
    assert config.model.attention == "auto"
    assert build.attention_kernel(config, mesh["v5e:2x2"], wide) == "flash"
    assert build.attention_kernel(config, mesh["v6e:2x2"], wide) == "flash"
    assert build.attention_kernel(config, mesh["v4:2x2x1"], wide) == "xla"
    assert build.attention_kernel(config, mesh["v5p:2x2x1"], wide) == "xla"
    assert build.attention_kernel(config, mesh["v5e:2x2"], narrow) == "xla"
    assert build.attention_kernel(config, cpu, wide) == "xla"
    config.rollout.max_new_tokens = 4096  # rows of 5,120 columns
    assert build.attention_kernel(config, mesh["v5e:2x2"], wide) == "xla"
    config.model.attention = "xla"
    assert build.attention_kernel(config, mesh["v5e:2x2"], wide) == "xla"
    config.model.attention = "flash"
    assert build.attention_kernel(config, mesh["v4:2x2x1"], wide) == "flash"
    with pytest.raises(ValueError, match="needs TPU devices"):
        build.attention_kernel(config, cpu, wide)
    config.model.attention = "splash"
    with pytest.raises(ValueError, match="model.attention='splash'"):
        build.attention_kernel(config, mesh["v5e:2x2"], wide)

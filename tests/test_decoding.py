"""The decode step: logits against a teacher-forced forward, the packed
layout, the per-platform matmul lowering and the CPU weight dtype."""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import sampler as S
from rlvr_jax.model import decoder as M
from rlvr_jax.model import params as PR
from rlvr_jax.rollout import decoding as D
from rlvr_jax.rollout import sampling
from tests import hf_fixtures

_forward = jax.jit(M.forward, static_argnums=0)
_hidden = jax.jit(M.hidden, static_argnums=0)


@pytest.fixture(scope="module", params=["tied", "untied"])
def fp32_model(request, hf_tiny_dir, tmp_path_factory):
    if request.param == "tied":
        path = hf_tiny_dir
    else:
        path = hf_fixtures.make_checkpoint(
            tmp_path_factory.mktemp("hf_untied"), seed=5, tie_word_embeddings=False
        )
    config, params = PR.load_hf(path, np.float32, compute_dtype="float32")
    assert config.tie_embeddings == (request.param == "tied")
    return config, params


def _decode(
    config, params, tokens_bt, mask_bt, feed_bn, n, weights_dtype=None, block=None
):
    """Prefill, then feed `feed_bn` (repeated n times) one token per step.

    With `block`, each step passes per-row cache slots and reads the cache in
    blocks of `block` slots, only as many as are filled.

    Returns fp32 logits [B * n, N] of each step, from `D.step`.
    """
    b, t = tokens_bt.shape
    new = feed_bn.shape[1]
    cache = M.init_cache(config, b, t, "float32")
    _, cache = _hidden(
        config, params, tokens_bt, M.positions_from_mask(mask_bt), mask_bt, cache
    )
    caches, valid_rs = D.cache_from_prefill(cache, new, n, jnp.float32)
    weights = D.pack(config, params, weights_dtype)
    step = jax.jit(D.step, static_argnums=0, static_argnames="block")
    feed_rn = np.repeat(feed_bn, n, axis=0)
    length_r = np.repeat(mask_bt.sum(-1), n)
    slot_kwargs = {}
    out = []
    for j in range(new):
        slot = jnp.asarray(t + j, jnp.int32)
        if block is not None:
            slot = jnp.full(feed_rn.shape[:1], t + j, jnp.int32)
            slot_kwargs = dict(block=block, blocks=jnp.int32(-(-(t + j + 1) // block)))
        logits_rv, caches = step(
            config,
            weights,
            caches,
            jnp.asarray(feed_rn[:, j], jnp.int32),
            jnp.asarray(length_r + j, jnp.int32),
            slot,
            valid_rs,
            **slot_kwargs,
        )
        out.append(np.asarray(logits_rv))
    return np.stack(out, axis=1), feed_rn


def test_step_logits_equal_teacher_forced_forward(fp32_model):
    config, params = fp32_model
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, config.vocab_size, k).tolist() for k in (7, 2, 12)]
    tokens_bt, mask_bt = S.pad_prompts(prompts)
    new, n = 6, 2
    feed_bn = rng.integers(0, config.vocab_size, (3, new))
    got_rnv, feed_rn = _decode(config, params, tokens_bt, mask_bt, feed_bn, n)
    _assert_teacher_forced(config, params, tokens_bt, mask_bt, feed_rn, n, got_rnv)


def test_blocked_step_with_per_row_slots_equals_teacher_forced_forward(fp32_model):
    """Per-row cache slots and attention over only the filled blocks (the
    continuous sampler's step) give the teacher-forced logits too."""
    config, params = fp32_model
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, config.vocab_size, k).tolist() for k in (7, 2, 12)]
    tokens_bt, mask_bt = S.pad_prompts(prompts)
    new, n = 8, 2  # 16 + 8 cache slots: six blocks of 4, three to six read
    feed_bn = rng.integers(0, config.vocab_size, (3, new))
    got_rnv, feed_rn = _decode(config, params, tokens_bt, mask_bt, feed_bn, n, block=4)
    _assert_teacher_forced(config, params, tokens_bt, mask_bt, feed_rn, n, got_rnv)


def _assert_teacher_forced(config, params, tokens_bt, mask_bt, feed_rn, n, got_rnv):
    # The same tokens in one left-padded forward: column t + j holds fed
    # token j, so its logits are what decode step j returns.
    t = tokens_bt.shape[1]
    full = np.concatenate([np.repeat(tokens_bt, n, 0), feed_rn], axis=1)
    mask = np.concatenate([np.repeat(mask_bt, n, 0), np.ones_like(feed_rn, bool)], 1)
    want_rnv = np.asarray(_forward(config, params, full, mask=mask))[:, t:]
    assert np.abs(want_rnv).max() > 1.0  # logits that can tell tokens apart
    np.testing.assert_allclose(got_rnv, want_rnv, atol=1e-5, rtol=1e-5)


def test_bf16_model_with_fp32_stored_weights_matches_bf16_weights(hf_tiny_dir):
    """Storing the bf16-rounded weights as fp32 (the CPU choice) changes no
    value: it is the bf16 model's arithmetic, only read from wider words."""
    config, params = PR.load_hf(hf_tiny_dir, np.float32, compute_dtype="bfloat16")
    packed = D.pack(config, params, "float32")
    plain = D.pack(config, params)
    assert packed.layers[0].gate_up_od.dtype == jnp.float32
    assert plain.layers[0].gate_up_od.dtype == jnp.bfloat16
    for a, b in zip(jax.tree.leaves(packed), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(
            np.asarray(a, np.float32), np.asarray(b, np.float32)
        )

    rng = np.random.default_rng(1)
    tokens_bt, mask_bt = S.pad_prompts([rng.integers(1, 256, 5).tolist()] * 2)
    feed_bn = rng.integers(0, 256, (2, 3))
    wide, _ = _decode(config, params, tokens_bt, mask_bt, feed_bn, 1, "float32")
    narrow, _ = _decode(config, params, tokens_bt, mask_bt, feed_bn, 1)
    # On CPU both multiply the same values in fp32; only the fp32 summation
    # order of the two kernels differs (measured: 2.4e-7 at most).
    np.testing.assert_allclose(wide, narrow, rtol=1e-5, atol=1e-5)


def test_pack_lays_out_every_weight_as_out_by_in(fp32_model):
    config, params = fp32_model
    w = jax.jit(D.pack, static_argnums=0)(config, params)
    layers = params["layers"]
    n, k, h, d, f = (
        config.n_heads,
        config.n_kv_heads,
        config.head_dim,
        config.d_model,
        config.mlp_dim,
    )
    assert len(w.layers) == config.n_layers
    for i, lw in enumerate(w.layers):
        attn, mlp = layers["attn"], layers["mlp"]
        q = np.asarray(attn["q_kernel"][i]).reshape(d, n * h).T
        kv = np.asarray(attn["k_kernel"][i]).reshape(d, k * h).T
        v = np.asarray(attn["v_kernel"][i]).reshape(d, k * h).T
        np.testing.assert_array_equal(lw.qkv_od, np.concatenate([q, kv, v]))
        np.testing.assert_array_equal(
            lw.o_dm, np.asarray(attn["o_kernel"][i]).reshape(n * h, d).T
        )
        np.testing.assert_array_equal(
            lw.gate_up_od,
            np.concatenate(
                [np.asarray(mlp["gate_kernel"][i]).T, np.asarray(mlp["up_kernel"][i]).T]
            ),
        )
        np.testing.assert_array_equal(lw.down_df, np.asarray(mlp["down_kernel"][i]).T)
        assert lw.gate_up_od.shape == (2 * f, d)
        np.testing.assert_array_equal(lw.input_norm_d, layers["input_norm"]["scale"][i])
        np.testing.assert_array_equal(
            lw.qkv_bias_o,
            np.concatenate([np.asarray(attn[b][i]).reshape(-1) for b in _QKV_BIAS]),
        )
    embedding = np.asarray(params["embed"]["embedding"])
    if config.tie_embeddings:
        # One copy of the tied matrix: the head, which the lookup reads too.
        assert w.embed_vd is None
        np.testing.assert_array_equal(w.head_vd, embedding)
    else:
        np.testing.assert_array_equal(w.embed_vd, embedding)
        np.testing.assert_array_equal(w.head_vd, np.asarray(params["lm_head"]).T)


_QKV_BIAS = ("q_bias", "k_bias", "v_bias")


def test_project_equals_einsum_in_fp32_and_bf16():
    rng = np.random.default_rng(2)
    x_rd = rng.standard_normal((8, 96)).astype(np.float32)
    w_od = rng.standard_normal((40, 96)).astype(np.float32)
    want = x_rd.astype(np.float64) @ w_od.T.astype(np.float64)
    got = np.asarray(jax.jit(D.project)(x_rd, w_od))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)

    xb, wb = jnp.asarray(x_rd, jnp.bfloat16), jnp.asarray(w_od, jnp.bfloat16)
    exact = np.asarray(xb, np.float64) @ np.asarray(wb, np.float64).T
    got_bf16 = jax.jit(D.project)(xb, wb)
    got_f32 = jax.jit(D.project, static_argnums=2)(xb, wb, jnp.float32)
    assert got_bf16.dtype == jnp.bfloat16 and got_f32.dtype == jnp.float32
    # fp32 accumulation of exact bf16 products, then one rounding (or none).
    np.testing.assert_allclose(np.asarray(got_f32), exact, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(got_bf16, np.float32), exact, rtol=2**-8, atol=1e-2
    )


def test_a_rows_logits_do_not_depend_on_the_rows_beside_it():
    """300 rows in one step, then the last 100 alone: the same logits.

    XLA:CPU once compiled a decode step wrongly when its rows outnumbered
    the vocabulary (the cache width here too): rows from 256 on got another
    row's values, so greedy rollouts in 200-300 slots decoded garbage.
    """
    config = M.ModelConfig.tiny(
        dtype="float32", vocab_size=256, d_model=128, mlp_dim=256
    )
    weights = D.pack(config, M.init_params(config, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    rows, width, lo = 300, 256, 200
    k, h = config.n_kv_heads, config.head_dim
    cache = D.Cache(
        tuple(
            jnp.asarray(rng.standard_normal((rows, k, h, width)), jnp.float32)
            for _ in range(config.n_layers)
        ),
        tuple(
            jnp.asarray(rng.standard_normal((rows, k, width, h)), jnp.float32)
            for _ in range(config.n_layers)
        ),
    )
    tokens_r = jnp.asarray(rng.integers(0, config.vocab_size, rows), jnp.int32)
    positions_r = jnp.asarray(rng.integers(10, 200, rows), jnp.int32)
    valid_rs = jnp.ones((rows, width), bool)

    @jax.jit
    def logits(cache, tokens_r, positions_r, valid_rs):
        return D.step(
            config, weights, cache, tokens_r, positions_r, positions_r + 20, valid_rs
        )[0]

    together = logits(cache, tokens_r, positions_r, valid_rs)
    tail = jax.tree.map(lambda x: x[lo:], (cache, tokens_r, positions_r, valid_rs))
    alone = logits(*tail)
    np.testing.assert_allclose(
        np.asarray(together)[lo:], np.asarray(alone), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "platform,operand", [("cpu", "f32"), ("cuda", "bf16"), ("tpu", "bf16")]
)
def test_project_is_a_dot_in_fp32_on_cpu_and_in_the_compute_dtype_elsewhere(
    platform, operand
):
    x = jax.ShapeDtypeStruct((8, 64), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((96, 64), jnp.bfloat16)
    exported = jax.export.export(jax.jit(D.project), platforms=[platform])(x, w)
    dots = [
        line
        for line in exported.mlir_module().splitlines()
        if "stablehlo.dot_general" in line
    ]
    assert len(dots) == 1
    assert f"tensor<8x64x{operand}>, tensor<96x64x{operand}>" in dots[0]


def test_cache_from_prefill_layout_rows_and_validity():
    config = M.ModelConfig.tiny(dtype="float32", n_layers=2)
    b, t, new, n = 2, 5, 3, 3
    rng = np.random.default_rng(3)
    shape = (config.n_layers, b, t, config.n_kv_heads, config.head_dim)
    k = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape).astype(np.float32)
    valid = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    cache = M.KVCache(jnp.asarray(k), jnp.asarray(v), jnp.asarray(valid), jnp.int32(t))
    caches, valid_rs = D.cache_from_prefill(cache, new, n, jnp.bfloat16)
    assert len(caches.k) == config.n_layers
    for layer in range(config.n_layers):
        k_rkhs, v_rksh = np.asarray(caches.k[layer]), np.asarray(caches.v[layer])
        assert k_rkhs.shape == (b * n, config.n_kv_heads, config.head_dim, t + new)
        assert v_rksh.shape == (b * n, config.n_kv_heads, t + new, config.head_dim)
        assert caches.k[layer].dtype == jnp.bfloat16
        for r in range(b * n):
            want_k = k[layer, r // n].astype(jnp.bfloat16).astype(np.float32)
            np.testing.assert_array_equal(
                k_rkhs[r, ..., :t].astype(np.float32), want_k.transpose(1, 2, 0)
            )
            want_v = v[layer, r // n].astype(jnp.bfloat16).astype(np.float32)
            np.testing.assert_array_equal(
                v_rksh[r, :, :t].astype(np.float32), want_v.transpose(1, 0, 2)
            )
        assert not k_rkhs[..., t:].any() and not v_rksh[:, :, t:].any()
    np.testing.assert_array_equal(
        valid_rs, np.repeat(np.concatenate([valid, np.ones((b, new), bool)], 1), n, 0)
    )


def test_weights_are_stored_fp32_on_cpu_and_in_compute_dtype_elsewhere():
    config = M.ModelConfig.tiny(dtype="bfloat16")
    params = jax.jit(M.init_params, static_argnums=0)(config, jax.random.key(0))
    assert sampling.platforms_of(params) == {"cpu"}
    assert S.decode_weights_dtype(config, params) == "float32"
    abstract = M.abstract_params(config)  # no devices: the default backend
    assert sampling.platforms_of(abstract) == {jax.default_backend()} == {"cpu"}
    assert S.decode_weights_dtype(config.replace(dtype="float32"), params) == "float32"
    with mock.patch.object(sampling, "platforms_of", return_value={"gpu"}):
        assert S.decode_weights_dtype(config, params) == "bfloat16"

"""The Flax Qwen2 model: KV cache vs full forward, precision, remat, configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.model import decoder as M


@pytest.fixture(scope="module")
def tiny():
    config = M.ModelConfig.tiny(dtype="float32", vocab_size=128)
    return config, M.init_params(config, jax.random.key(0))


# Jitted: op-by-op dispatch of a whole forward costs seconds per call on CPU.
forward = jax.jit(M.forward, static_argnums=0)


def _batch(rng, vocab, lengths, width):
    tokens = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), bool)
    for row, n in enumerate(lengths):
        tokens[row, width - n :] = rng.integers(1, vocab, n)
        mask[row, width - n :] = True
    return tokens, mask


def test_prefill_then_token_by_token_matches_full_forward(tiny):
    config, params = tiny
    tokens, mask = _batch(np.random.default_rng(0), config.vocab_size, (11, 6, 3), 11)
    full = np.asarray(forward(config, params, tokens, mask=mask))
    positions = np.asarray(M.positions_from_mask(mask))

    prefill = 5
    cache = M.init_cache(config, 3, 16, dtype="float32")
    logits, cache = forward(
        config,
        params,
        tokens[:, :prefill],
        positions[:, :prefill],
        mask[:, :prefill],
        cache,
    )
    pieces = [np.asarray(logits)]
    for t in range(prefill, tokens.shape[1]):
        logits, cache = forward(
            config,
            params,
            tokens[:, t : t + 1],
            positions[:, t : t + 1],
            mask[:, t : t + 1],
            cache,
        )
        pieces.append(np.asarray(logits))
    assert int(cache.index) == tokens.shape[1]
    stepped = np.concatenate(pieces, axis=1)
    assert np.abs(stepped - full)[mask].max() <= 1e-5


def test_cache_dtype_bf16_stays_close(tiny):
    config, params = tiny
    tokens, mask = _batch(np.random.default_rng(1), config.vocab_size, (8, 8), 8)
    full = np.asarray(forward(config, params, tokens, mask=mask))
    cache = M.init_cache(config, 2, 8, dtype="bfloat16")
    logits, _ = forward(config, params, tokens, None, mask, cache)
    # bf16 keys/values carry ~3 significant digits.
    assert np.abs(np.asarray(logits) - full).max() < 5e-2


def test_padding_does_not_change_real_logits(tiny):
    config, params = tiny
    rng = np.random.default_rng(2)
    row = rng.integers(1, config.vocab_size, 5)
    alone = forward(config, params, row[None])
    padded = np.concatenate([np.zeros(4, np.int64), row])[None]
    mask = np.arange(9)[None] >= 4
    with_pad = forward(config, params, padded, mask=mask)
    np.testing.assert_allclose(
        np.asarray(with_pad)[0, 4:], np.asarray(alone)[0], atol=1e-5
    )
    assert np.isfinite(np.asarray(with_pad)).all()


def test_bf16_compute_within_documented_tolerance_of_fp32():
    """bf16 matmuls (fp32 params, norms, softmax, logits) track fp32 closely.

    Documented tolerance: for a 2-layer model with O(1) logits, the max
    absolute logit difference stays below 0.1 and the argmax agrees on >= 90%
    of positions.
    """
    config32 = M.ModelConfig.tiny(dtype="float32")
    params = M.init_params(config32, jax.random.key(4))
    config16 = config32.replace(dtype="bfloat16")
    tokens = np.random.default_rng(3).integers(0, config32.vocab_size, (4, 32))
    l32 = np.asarray(forward(config32, params, tokens))
    l16 = forward(config16, params, tokens)
    assert l16.dtype == jnp.float32  # logits are produced in fp32
    l16 = np.asarray(l16)
    assert np.abs(l16 - l32).max() < 0.1
    assert (l16.argmax(-1) == l32.argmax(-1)).mean() >= 0.9


def test_remat_is_numerically_identical(tiny):
    config, params = tiny
    tokens = np.random.default_rng(5).integers(0, config.vocab_size, (2, 9))

    def loss(p, cfg):
        return forward(cfg, p, tokens).mean()

    g1 = jax.jit(jax.grad(loss), static_argnums=1)(params, config)
    g2 = jax.jit(jax.grad(loss), static_argnums=1)(params, config.replace(remat=True))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_positions_from_mask():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(
        M.positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    )


@pytest.mark.parametrize(
    "preset,count",
    [
        (M.ModelConfig.qwen2_5_math_1_5b, 1_543_714_304),
        (M.ModelConfig.qwen2_5_0_5b, 494_032_768),
        (M.ModelConfig.qwen2_5_7b, 7_615_616_512),
    ],
)
def test_presets_have_published_parameter_counts(preset, count):
    assert M.count_params(M.abstract_params(preset())) == count


def test_from_hf_round_trip_and_errors():
    config = M.ModelConfig.qwen2_5_math_1_5b()
    assert M.ModelConfig.from_hf(config.to_hf()) == config
    hf = config.to_hf()
    # transformers>=5 nests rope_theta in rope_parameters.
    del hf["rope_theta"]
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    assert M.ModelConfig.from_hf(hf).rope_theta == 10000.0
    with pytest.raises(ValueError, match="unsupported architecture.*mistral"):
        M.ModelConfig.from_hf({**hf, "model_type": "mistral", "architectures": ["X"]})
    with pytest.raises(ValueError, match="RoPE scaling"):
        M.ModelConfig.from_hf({**hf, "rope_parameters": {"rope_type": "yarn"}})
    with pytest.raises(ValueError, match="multiple of"):
        M.ModelConfig.tiny(n_heads=3, n_kv_heads=2)

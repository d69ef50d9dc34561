"""The sampler: HF greedy parity, log-prob agreement, distributions, stopping,
no-retrace, sharding, and argument errors.

Every test runs fp32 compute and an fp32 KV cache unless it says otherwise, so
tolerances are those of fp32 arithmetic, not of bf16.
"""

from __future__ import annotations

import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlvr_jax import sampler as S
from rlvr_jax.model import decoder as M
from rlvr_jax.model import params as PR
from rlvr_jax.rollout import sampling, static
from tests import hf_fixtures

PAD = 0

# One compiled forward per shape (eager flax apply dispatches op by op).
_forward = jax.jit(M.forward, static_argnums=0)


@pytest.fixture(scope="module")
def hf_model(hf_tiny_dir):
    """(config, params, reference torch model) of the shared tiny checkpoint."""
    config, params = PR.load_hf(hf_tiny_dir, np.float32, compute_dtype="float32")
    return config, params, hf_fixtures.load_reference(hf_tiny_dir)


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    """A 16-token model: few enough bins for a chi-square test."""
    path = hf_fixtures.make_checkpoint(
        tmp_path_factory.mktemp("hf_v16"), seed=3, vocab_size=16
    )
    return PR.load_hf(path, np.float32, compute_dtype="float32")


def _prompts(rng, vocab, lengths):
    return [rng.integers(1, vocab, n).tolist() for n in lengths]


def _teacher_forced_logits(config, params, prompts, rollout, n):
    """fp32 logits [R, N, V] predicting each generated token, in one forward."""
    tokens_bt, mask_bt = S.pad_prompts(prompts)
    t = tokens_bt.shape[1]
    new = rollout.tokens.shape[1]
    tokens = np.concatenate([np.repeat(tokens_bt, n, 0), rollout.tokens], axis=1)
    response_mask = np.arange(new)[None] < rollout.lengths[:, None]
    mask = np.concatenate([np.repeat(mask_bt, n, 0), response_mask], axis=1)
    logits = np.asarray(_forward(config, params, tokens, mask=mask))
    # Position t - 1 + j predicts generated token j.
    return logits[:, t - 1 : t - 1 + new], response_mask


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _chi_square(counts, probs):
    """Pearson statistic and degrees of freedom; bins with expected < 5 merged."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(((obs - exp) ** 2 / exp).sum()), len(exp) - 1


def _chi_square_critical(df, z=3.0902):
    """Upper 0.1% point of chi2(df), Wilson-Hilferty (<= 3% above exact, df >= 1)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


# ------------------------------------------------------------------ parity
def test_greedy_matches_transformers_with_early_eos(hf_model):
    config, params, ref = hf_model
    prompts = _prompts(np.random.default_rng(0), config.vocab_size, (5, 12, 2, 8))
    new = 16
    width = max(map(len, prompts))
    tokens = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1

    def hf_generate(eos):
        with torch.no_grad():
            out = ref.generate(
                input_ids=torch.as_tensor(tokens),
                attention_mask=torch.as_tensor(mask),
                do_sample=False,
                max_new_tokens=new,
                eos_token_id=list(eos) if eos else None,
                pad_token_id=PAD,
            )
        return out[:, width:].numpy()

    # Pick stop tokens from the unconstrained greedy output: row 0 stops at its
    # 4th token and row 2 at its 7th; rows 1 and 3 may run on.
    free = hf_generate(())
    assert free.shape == (4, new)
    eos = (int(free[0, 3]), int(free[2, 6]))
    want = hf_generate(eos)

    got = S.generate(
        config,
        params,
        prompts,
        max_new_tokens=new,
        temperature=0.0,
        eos_ids=eos,
        seed=0,
        cache_dtype="float32",
        pad_id=PAD,
    )
    hits = np.isin(want, eos)
    want_len = np.where(hits.any(1), hits.argmax(1) + 1, new)
    assert want_len[0] <= 4 and want_len[2] <= 7
    assert want_len.max() > want_len[0]  # others decode on past a stopped row
    np.testing.assert_array_equal(got.tokens[:, : want.shape[1]], want)
    np.testing.assert_array_equal(got.tokens[:, want.shape[1] :], PAD)
    np.testing.assert_array_equal(got.lengths, want_len)
    np.testing.assert_array_equal(got.truncated, ~hits.any(1))
    assert got.finish_reason[0] == "stop"


# --------------------------------------------------------------- log-probs
@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(0.6, 0, 1.0), (0.0, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.5)],
)
def test_logprobs_match_teacher_forced_forward_and_stay_in_kept_set(
    hf_model, temperature, top_k, top_p
):
    config, params, _ = hf_model
    prompts = _prompts(np.random.default_rng(1), config.vocab_size, (9, 3))
    n = 8
    rollout = S.generate(
        config,
        params,
        prompts,
        max_new_tokens=12,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=(7, 11, 19),
        seed=5,
        n=n,
        cache_dtype="float32",
    )
    logits, response_mask = _teacher_forced_logits(config, params, prompts, rollout, n)
    # Greedy log-probs are defined under the raw logits (T = 1).
    scaled = logits / (temperature if temperature > 0 else 1.0)
    want = np.take_along_axis(_log_softmax(scaled), rollout.tokens[..., None], -1)
    err = np.abs(rollout.logprobs - want[..., 0])[response_mask].max()
    assert err <= 1e-5, f"max |dlogp| = {err}"
    np.testing.assert_array_equal(rollout.logprobs[~response_mask], 0.0)

    # Every drawn token lies in the kept set of its own teacher-forced logits.
    picked = np.take_along_axis(scaled, rollout.tokens[..., None], -1)[..., 0]
    sorted_desc = -np.sort(-scaled, axis=-1)
    if temperature == 0:
        cutoff = sorted_desc[..., 0]
    elif top_k:
        cutoff = sorted_desc[..., top_k - 1]
    elif top_p == 1.0:
        cutoff = np.full(picked.shape, -np.inf)
    else:
        p = np.exp(_log_softmax(sorted_desc))
        kept = (np.cumsum(p, -1) - p) < top_p
        cutoff = np.where(kept, sorted_desc, np.inf).min(-1)
        # The restriction is real: the nucleus excludes most of the vocabulary.
        assert kept.sum(-1).max() < config.vocab_size // 4
    assert (picked >= cutoff)[response_mask].all()
    if temperature > 0:
        assert len(np.unique(rollout.tokens[response_mask])) > 2 * max(top_k, 1)


# ----------------------------------------------------------- distributions
def test_first_token_frequencies_match_softmax_over_temperature(small_vocab):
    config, params = small_vocab
    prompt = [3, 1, 4, 1, 5]
    temperature, draws = 0.8, 4000
    rollout = S.generate(
        config,
        params,
        [prompt],
        max_new_tokens=1,
        temperature=temperature,
        eos_ids=(),
        seed=11,
        n=draws,
        cache_dtype="float32",
    )
    logits = np.asarray(_forward(config, params, np.array([prompt])))[0, -1]
    counts = np.bincount(rollout.tokens[:, 0], minlength=config.vocab_size)

    probs = np.exp(_log_softmax(logits / temperature))
    stat, df = _chi_square(counts, probs)
    assert df >= 5
    assert stat < _chi_square_critical(df), (stat, df)
    # The test has power: the untempered distribution is rejected.
    wrong = np.exp(_log_softmax(logits))
    stat_wrong, df_wrong = _chi_square(counts, wrong)
    assert stat_wrong > _chi_square_critical(df_wrong)


def test_top_k_top_p_distribution_is_the_renormalised_kept_set(small_vocab):
    config, params = small_vocab
    prompt = [2, 7, 1, 8]
    temperature, top_k, top_p, draws = 1.5, 8, 0.8, 4000
    rollout = S.generate(
        config,
        params,
        [prompt],
        max_new_tokens=1,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=(),
        seed=12,
        n=draws,
        cache_dtype="float32",
    )
    scaled = np.asarray(_forward(config, params, np.array([prompt])))[0, -1]
    scaled = scaled / temperature
    order = np.argsort(-scaled)[:top_k]
    p_k = np.exp(_log_softmax(scaled[order]))
    kept = order[(np.cumsum(p_k) - p_k) < top_p]
    assert 2 <= len(kept) < top_k  # both truncations are active
    probs = np.zeros(config.vocab_size)
    probs[kept] = np.exp(_log_softmax(scaled[kept]))
    counts = np.bincount(rollout.tokens[:, 0], minlength=config.vocab_size)
    assert counts[probs == 0].sum() == 0
    stat, df = _chi_square(counts, probs)
    assert df >= 1
    assert stat < _chi_square_critical(df), (stat, df)


# ----------------------------------------------------------------- stopping
def test_rows_stop_at_first_eos_and_loop_exits_early(hf_model):
    config, params, _ = hf_model
    prompts = _prompts(np.random.default_rng(4), config.vocab_size, (4, 9, 13, 1))
    eos = tuple(range(1, config.vocab_size, 8))  # 32 stop ids, ~1/8 of the mass
    tokens_bt, mask_bt = S.pad_prompts(prompts)
    new = 64
    settings = S.SamplingSettings(
        max_new_tokens=new,
        temperature=1.0,
        eos_ids=eos,
        n=4,
        cache_dtype="float32",
        pad_id=PAD,
    )
    out = S.sample(
        config, params, tokens_bt, mask_bt, jax.random.key(1), settings=settings
    )
    tokens, logprobs = np.asarray(out.tokens_rn), np.asarray(out.logprobs_rn)
    lengths, truncated = np.asarray(out.lengths_r), np.asarray(out.truncated_r)
    is_eos = np.isin(tokens, eos)
    for row in range(tokens.shape[0]):
        length = lengths[row]
        assert not is_eos[row, : length - 1].any()
        assert is_eos[row, length - 1]
        assert (tokens[row, length:] == PAD).all()
        assert (logprobs[row, length:] == 0).all()
        assert (logprobs[row, :length] < 0).all()
    assert not truncated.any()
    # Every row stopped well before N, and the loop stopped with the last one.
    assert int(out.steps) == lengths.max() < new
    assert len(set(lengths.tolist())) > 1


def test_truncated_rows_are_flagged(hf_model):
    config, params, _ = hf_model
    prompts = _prompts(np.random.default_rng(5), config.vocab_size, (4, 7))
    rollout = S.generate(
        config,
        params,
        prompts,
        max_new_tokens=10,
        temperature=1.0,
        eos_ids=tuple(range(1, config.vocab_size, 16)),
        seed=2,
        n=8,
        cache_dtype="float32",
    )
    hit = np.isin(rollout.tokens, tuple(range(1, config.vocab_size, 16))).any(1)
    assert hit.any() and not hit.all()
    np.testing.assert_array_equal(rollout.truncated, ~hit)
    np.testing.assert_array_equal(rollout.lengths[~hit], 10)
    assert set(rollout.finish_reason) == {"stop", "length"}


# ---------------------------------------------------- randomness, batching
def test_seeded_determinism_and_independent_rows(hf_model):
    config, params, _ = hf_model
    prompts = _prompts(np.random.default_rng(6), config.vocab_size, (5, 8))
    kwargs = dict(
        max_new_tokens=6,
        temperature=1.0,
        eos_ids=(),
        n=4,
        cache_dtype="float32",
    )
    a = S.generate(config, params, prompts, seed=0, **kwargs)
    b = S.generate(config, params, prompts, seed=0, **kwargs)
    c = S.generate(config, params, prompts, seed=1, **kwargs)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert (a.tokens != c.tokens).any()
    # The 4 samples of one prompt share a prefill but not their randomness.
    assert len({tuple(row) for row in a.tokens[:4]}) == 4


def test_steps_draw_independent_randomness(hf_model):
    """A zero embedding (hence zero tied head) makes every step's logits 0.

    The distribution is then uniform at every step whatever the context, so
    consecutive tokens of a row must agree with probability 1/V only; reusing a
    row's random key across steps would repeat the token every time.
    """
    config, params, _ = hf_model
    params = {
        **params,
        "embed": {"embedding": jnp.zeros_like(params["embed"]["embedding"])},
    }
    rollout = S.generate(
        config,
        params,
        [[1, 2, 3]],
        max_new_tokens=8,
        temperature=0.7,
        eos_ids=(),
        seed=9,
        n=256,
        cache_dtype="float32",
    )
    np.testing.assert_allclose(
        rollout.logprobs, -math.log(config.vocab_size), atol=1e-5
    )
    repeats = (rollout.tokens[:, 1:] == rollout.tokens[:, :-1]).mean()
    assert repeats < 0.02  # expected 1/256
    counts = np.bincount(rollout.tokens.ravel(), minlength=config.vocab_size)
    stat, df = _chi_square(counts, np.full(config.vocab_size, 1 / config.vocab_size))
    assert stat < _chi_square_critical(df), (stat, df)


def test_prefill_sharing_and_chunking_do_not_change_samples(hf_model):
    config, params, _ = hf_model
    prompts = _prompts(np.random.default_rng(7), config.vocab_size, (5, 8, 3, 11, 6))
    kwargs = dict(
        max_new_tokens=7,
        temperature=0.9,
        eos_ids=(7,),
        seed=4,
        cache_dtype="float32",
    )
    shared = S.generate(config, params, prompts, n=3, **kwargs)
    repeated = S.generate(
        config, params, [p for p in prompts for _ in range(3)], n=1, **kwargs
    )
    chunked = S.generate(config, params, prompts, n=3, slots=6, **kwargs)
    for other in (repeated, chunked):
        np.testing.assert_array_equal(shared.tokens, other.tokens)
        np.testing.assert_array_equal(shared.lengths, other.lengths)
        # Batch size changes the fp32 matmul blocking: agreement to 1e-5.
        np.testing.assert_allclose(shared.logprobs, other.logprobs, atol=1e-5)
    np.testing.assert_array_equal(shared.prompt_index, np.repeat(np.arange(5), 3))
    # The prompts in calls of 3 (each sized for 3: the last one padded), rows
    # numbered on from the previous call: the same samples, the decode
    # weights packed once.
    settings = S.SamplingSettings(
        **{k: v for k, v in kwargs.items() if k != "seed"}, n=3
    )
    packs = mock.patch.object(sampling, "_pack_jit", wraps=sampling._pack_jit)
    with packs as pack:
        calls = S.rollout_in_calls(
            config, params, prompts, settings, jax.random.key(4), per_call=3
        )
        assert pack.call_count == 1
    for field in ("tokens", "lengths", "prompt_index", "prompt_tokens"):
        np.testing.assert_array_equal(getattr(shared, field), getattr(calls, field))
    np.testing.assert_allclose(shared.logprobs, calls.logprobs, atol=1e-5)


def test_prepared_weights_are_packed_once_and_sample_like_params(hf_model):
    config, params, _ = hf_model
    prompts = _prompts(np.random.default_rng(12), config.vocab_size, (4, 9, 2, 6))
    kwargs = dict(
        max_new_tokens=6,
        temperature=0.8,
        eos_ids=(7,),
        seed=5,
        n=2,
        cache_dtype="float32",
    )
    packs = mock.patch.object(sampling, "_pack_jit", wraps=sampling._pack_jit)
    with packs as pack:
        chunked = S.generate(config, params, prompts, slots=2, **kwargs)
        assert pack.call_count == 1  # one pack serves all four chunks
        weights = S.prepare(config, params)
        assert pack.call_count == 2
        assert S.prepare(config, weights) is weights
        assert pack.call_count == 2
    # fp32 params and compute: the prefill reads the caller's arrays, uncopied.
    for a, b in zip(jax.tree.leaves(weights.prefill), jax.tree.leaves(params)):
        assert a is b
    tokens_bt, mask_bt = S.pad_prompts(prompts)
    settings = S.SamplingSettings(**{k: v for k, v in kwargs.items() if k != "seed"})
    key = jax.random.key(5)
    # One unchunked call on the prepared weights draws what the four chunks did.
    whole = S.sample(config, weights, tokens_bt, mask_bt, key, settings=settings)
    np.testing.assert_array_equal(whole.tokens_rn, chunked.tokens)
    np.testing.assert_array_equal(whole.lengths_r, chunked.lengths)
    # Batch size changes the fp32 matmul blocking: agreement to 1e-5.
    np.testing.assert_allclose(whole.logprobs_rn, chunked.logprobs, atol=1e-5)


def test_decode_is_traced_once_for_repeated_shapes(hf_model):
    config, params, _ = hf_model
    # Settings no other test uses, so the first call below must trace.
    settings = S.SamplingSettings(
        max_new_tokens=5,
        temperature=0.7,
        eos_ids=(3,),
        n=2,
        cache_dtype="float32",
        pad_id=1,
    )
    rng = np.random.default_rng(8)
    traced = mock.patch.object(static, "_decode_loop", wraps=static._decode_loop)
    with traced as loop:
        for step in range(3):
            prompts = _prompts(rng, config.vocab_size, rng.integers(1, 16, 4))
            tokens_bt, mask_bt = S.pad_prompts(prompts)
            assert tokens_bt.shape == (4, 16)
            out = S.sample(
                config,
                params,
                tokens_bt,
                mask_bt,
                jax.random.key(step),
                row_offset=8 * step,
                settings=settings,
            )
            jax.block_until_ready(out)
        assert loop.call_count == 1
        # A new prompt bucket is a new shape: exactly one more trace.
        tokens_bt, mask_bt = S.pad_prompts([[1] * 20] * 4)
        S.sample(
            config, params, tokens_bt, mask_bt, jax.random.key(0), settings=settings
        )
        assert loop.call_count == 2


def test_compute_dtype_params_cast_is_bit_identical(hf_model):
    config, params, _ = hf_model
    config = config.replace(dtype="bfloat16")  # fp32 params, bf16 compute
    cast = S.compute_dtype_params(config, params)
    assert cast["layers"]["attn"]["q_kernel"].dtype == jnp.bfloat16
    assert cast["embed"]["embedding"].dtype == jnp.bfloat16
    assert cast["final_norm"]["scale"].dtype == jnp.float32
    tokens = np.random.default_rng(9).integers(0, config.vocab_size, (2, 7))
    np.testing.assert_array_equal(
        np.asarray(_forward(config, params, tokens)),
        np.asarray(_forward(config, cast, tokens)),
    )


def test_bf16_defaults_agree_with_bf16_teacher_forcing(hf_model):
    """With the production dtypes (bf16 compute and cache) sampler and learner
    log-probs stay within bf16 rounding of each other."""
    config, params, _ = hf_model
    config = config.replace(dtype="bfloat16")
    prompts = _prompts(np.random.default_rng(10), config.vocab_size, (6, 9))
    rollout = S.generate(
        config,
        params,
        prompts,
        max_new_tokens=10,
        temperature=0.6,
        eos_ids=(),
        seed=0,
        n=2,
    )
    logits, response_mask = _teacher_forced_logits(config, params, prompts, rollout, 2)
    want = np.take_along_axis(
        _log_softmax(logits / 0.6), rollout.tokens[..., None], -1
    )[..., 0]
    err = np.abs(rollout.logprobs - want)[response_mask]
    # Same budget as the model's bf16-vs-fp32 logit tolerance (0.1); a wrong
    # position or mask shows up as O(1) errors.
    assert err.max() < 0.1 and err.mean() < 0.03, (err.max(), err.mean())


# ----------------------------------------------------------------- sharding
def _fsdp_spec(x, size):
    """Shards the first axis divisible by `size` over `fsdp` (learner layout)."""
    for axis, dim in enumerate(x.shape):
        if dim % size == 0 and dim >= size:
            spec = [None] * x.ndim
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def test_sharded_mesh_matches_single_device(hf_model):
    config, params, _ = hf_model
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    sharded_params = jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, _fsdp_spec(x, 2))), params
    )
    assert sharded_params["embed"]["embedding"].sharding.spec == P("fsdp", None)
    prompts = _prompts(np.random.default_rng(11), config.vocab_size, (3, 9, 5, 14))
    tokens_bt, mask_bt = S.pad_prompts(prompts)
    settings = S.SamplingSettings(
        max_new_tokens=10,
        temperature=0.8,
        top_k=8,
        eos_ids=(5, 9),
        n=2,
        cache_dtype="float32",
    )
    key = jax.random.key(3)
    single = S.sample(config, params, tokens_bt, mask_bt, key, settings=settings)
    batch = NamedSharding(mesh, P("data"))
    sharded = S.sample(
        config,
        sharded_params,
        jax.device_put(tokens_bt, batch),
        jax.device_put(mask_bt, batch),
        key,
        settings=settings,
    )
    assert len(sharded.tokens_rn.sharding.device_set) == 8
    np.testing.assert_array_equal(sharded.tokens_rn, single.tokens_rn)
    np.testing.assert_array_equal(sharded.lengths_r, single.lengths_r)
    np.testing.assert_array_equal(sharded.truncated_r, single.truncated_r)
    np.testing.assert_allclose(sharded.logprobs_rn, single.logprobs_rn, atol=1e-5)


def test_untied_model_rollout_over_sharded_params_matches_single_device(
    tmp_path_factory,
):
    """An untied model with its params placed by the partition rules
    (sharding.PARAM_RULES) samples over a mesh exactly what one device
    samples: the prefill split by prompt, the prompt store by position."""
    from rlvr_jax import sharding as SH

    path = hf_fixtures.make_checkpoint(
        tmp_path_factory.mktemp("hf_untied"), seed=6, tie_word_embeddings=False
    )
    config, params = PR.load_hf(path, np.float32, compute_dtype="float32")
    assert not config.tie_embeddings
    mesh = SH.make_mesh(data=2, fsdp=4)
    placed = jax.device_put(params, SH.tree_shardings(params, mesh))
    assert placed["lm_head"].sharding.spec == P("fsdp", "tensor")
    prompts = _prompts(np.random.default_rng(15), config.vocab_size, (6, 2, 9, 4))
    settings = S.SamplingSettings(
        max_new_tokens=8, temperature=0.9, eos_ids=(7, 11), n=2, cache_dtype="float32"
    )
    roll = S.rollout(
        config, placed, prompts, settings, jax.random.key(4), slots=4, mesh=mesh
    )
    want = S.rollout(config, params, prompts, settings, jax.random.key(4), slots=4)
    np.testing.assert_array_equal(roll.tokens, want.tokens)
    np.testing.assert_array_equal(roll.lengths, want.lengths)
    np.testing.assert_allclose(roll.logprobs, want.logprobs, atol=1e-5)


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "change,name",
    [
        (dict(prompts=[[1, 2], []]), "prompts"),
        (dict(prompts=[]), "prompts"),
        (dict(prompts=[[1] * 250]), "prompts"),  # 250 + 8 > max_seq_len 256
        (dict(prompts=[[1, 999]]), "prompts"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(eos_ids=(5, 256)), "eos_ids"),
        (dict(eos_ids=-1), "eos_ids"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(temperature=-0.1), "temperature"),
        (dict(n=0), "n"),
        (dict(slots=0), "slots"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(hf_model, change, name):
    config, params, _ = hf_model
    kwargs = dict(
        prompts=[[1, 2, 3]],
        max_new_tokens=8,
        temperature=0.6,
        eos_ids=(5,),
        seed=0,
    )
    kwargs.update(change)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        S.generate(config, params, **kwargs)


def test_pad_prompts_left_pads_to_buckets():
    tokens, mask = S.pad_prompts([[5, 6, 7], [8]], buckets=(2, 4, 8))
    np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert S.pad_prompts([[1] * 17])[0].shape == (1, 32)
    with pytest.raises(ValueError, match="^prompts:"):
        S.pad_prompts([[1] * 9], buckets=(4, 8))


# ------------------------------------------------------- continuous batching
_SLOTS = 8  # two prompts' worth of rows (n = 4)


@pytest.fixture(scope="module")
def sharpened(hf_model):
    """The tiny model with a 2x embedding/head, so each row's own tokens decide
    whether it ends soon (EOS ids are 1/8 of the vocabulary): sampled
    response lengths then spread from 1 to the 48-token limit, median ~7.
    8 prompts × 4 samples."""
    config, params, _ = hf_model
    params = {
        **params,
        "embed": {"embedding": 2.0 * params["embed"]["embedding"]},
    }
    prompts = _prompts(np.random.default_rng(13), config.vocab_size, range(2, 18, 2))
    tokens_bt, mask_bt = S.pad_prompts(prompts)
    return config, S.prepare(config, params), tokens_bt, mask_bt


def _long_tail_settings(temperature):
    return S.SamplingSettings(
        max_new_tokens=48,
        temperature=temperature,
        eos_ids=tuple(range(3, 256, 8)),
        n=4,
        cache_dtype="float32",
    )


_runs: dict = {}


def _run(sharpened, temperature, slots=None, **kwargs):
    """One rollout of `sharpened`, memoised (each is a compilation): the
    chunked reference (`sample` on two prompts per call) when slots is None,
    else `continuous`."""
    config, weights, tokens_bt, mask_bt = sharpened
    settings = _long_tail_settings(temperature)
    name = (temperature, slots, tuple(sorted(kwargs.items())))
    if name in _runs:
        return _runs[name]
    key = jax.random.key(21)
    if slots is None:
        chunks = [
            S.sample(
                config,
                weights,
                tokens_bt[c : c + 2],
                mask_bt[c : c + 2],
                key,
                row_offset=c * settings.n,
                settings=settings,
            )
            for c in range(0, len(tokens_bt), 2)
        ]
        out = jax.tree.map(
            lambda *x: np.concatenate([np.atleast_1d(a) for a in x]), *chunks
        )
        out = out._replace(decode_steps=int(out.decode_steps.sum()))
    else:
        out = jax.device_get(
            S.continuous(
                config,
                weights,
                tokens_bt,
                mask_bt,
                key,
                settings=settings,
                slots=slots,
                **kwargs,
            )
        )
    _runs[name] = out
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_continuous_equals_chunked_with_fewer_decode_steps(sharpened, temperature):
    chunked = _run(sharpened, temperature)
    cont = _run(sharpened, temperature, _SLOTS, block=8)
    lengths = np.asarray(chunked.lengths_r)
    assert len(set(lengths.tolist())) > 2, lengths
    # Measured agreement of the tokens: 100% on this model (an fp32 tie
    # could flip a token; none does).
    agreement = (np.asarray(cont.tokens_rn) == np.asarray(chunked.tokens_rn)).mean()
    assert agreement == 1.0, agreement
    np.testing.assert_array_equal(cont.lengths_r, chunked.lengths_r)
    np.testing.assert_array_equal(cont.truncated_r, chunked.truncated_r)
    # Prefill batch and blocked attention change fp32 rounding only.
    np.testing.assert_allclose(cont.logprobs_rn, chunked.logprobs_rn, atol=1e-5)
    # The same rows in the same number of slots, in no more decode steps;
    # in far fewer on the sampled, long-tailed mix (most rows short, a few
    # run to or near the limit). Greedy repeats each prompt's row n times.
    steps = (int(cont.decode_steps), int(chunked.decode_steps))
    assert steps[0] <= steps[1], steps
    if temperature > 0:
        assert np.median(lengths) * 3 <= lengths.max(), lengths
        assert steps[0] < 0.8 * steps[1], steps
    # Never fewer steps than the busiest slot needs.
    assert _SLOTS * int(cont.decode_steps) >= (lengths - 1).sum()


def test_a_rows_tokens_do_not_depend_on_the_slot_count(sharpened):
    eight = _run(sharpened, 1.0, _SLOTS, block=8)
    two = _run(sharpened, 1.0, 2, refill_every=1)  # whole-cache attention
    np.testing.assert_array_equal(two.tokens_rn, eight.tokens_rn)
    np.testing.assert_array_equal(two.lengths_r, eight.lengths_r)
    np.testing.assert_allclose(two.logprobs_rn, eight.logprobs_rn, atol=1e-5)
    assert int(two.decode_steps) > int(eight.decode_steps)


@pytest.mark.parametrize(
    "change,name",
    [
        (dict(slots=6), "slots"),  # 4 data shards
        (dict(slots=0), "slots"),
        (dict(refill_every=0), "refill_every"),
        (dict(block=0), "block"),
    ],
)
def test_continuous_bad_arguments_raise_value_error_naming_them(hf_model, change, name):
    config, params, _ = hf_model
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    tokens_bt, mask_bt = S.pad_prompts([[1, 2, 3]] * 4)
    kwargs = dict(
        settings=_long_tail_settings(1.0),
        slots=8,
        slot_sharding=NamedSharding(mesh, P("data")),
    )
    kwargs.update(change)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        S.continuous(config, params, tokens_bt, mask_bt, jax.random.key(0), **kwargs)


def test_rollout_streams_rows_through_mesh_slots_like_generate(hf_model):
    """`sampler.rollout` (the training/eval path) over an 8-device mesh:
    prompts and slots padded to split over it, the same rows as `generate`."""
    from rlvr_jax import sharding as SH

    config, params, _ = hf_model
    prompts = _prompts(np.random.default_rng(14), config.vocab_size, (5, 8, 3))
    settings = S.SamplingSettings(
        max_new_tokens=8, temperature=0.9, eos_ids=(7, 11), n=2, cache_dtype="float32"
    )
    roll = S.rollout(
        config,
        params,
        prompts,
        settings,
        jax.random.key(3),
        buckets=None,
        slots=4,
        mesh=SH.make_mesh(data=4, fsdp=2),
        decode_sharding=None,
    )
    assert roll.slots == 8  # 4 rounded up to the 8 batch shards
    want = S.generate(
        config,
        params,
        prompts,
        seed=3,
        **{k: getattr(settings, k) for k in ("max_new_tokens", "temperature", "n")},
        eos_ids=settings.eos_ids,
        cache_dtype="float32",
    )
    assert roll.tokens.shape == (6, 8) and roll.prompt_tokens.shape == (6, 16)
    np.testing.assert_array_equal(roll.tokens, want.tokens)
    np.testing.assert_array_equal(roll.lengths, want.lengths)
    np.testing.assert_array_equal(roll.truncated, want.truncated)
    np.testing.assert_allclose(roll.logprobs, want.logprobs, atol=1e-5)
    assert roll.decode_steps >= want.lengths.max() - 1
    efficiency = roll.slot_efficiency
    assert efficiency == want.lengths.sum() / (8 * roll.decode_steps)

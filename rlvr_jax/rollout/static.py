"""The static-batch sampler: one prompt batch decoded as a whole.

`sample` prefills a left-padded prompt batch with the learner's forward and
runs one `jax.lax.while_loop` of `decoding.step` over every row until the
last one ends. Training samples through the continuous engine
(`rlvr_jax.rollout.engine`); this is the reference the tests hold the engine
to (same tokens and log-probs for a key), and a building block for
benchmarks.

Randomness. Row `r` at decode step `j` draws with the key
`fold_in(fold_in(key, row_offset + r), j)`, as in the engine.

Axis legend: as in `rlvr_jax.rollout.engine`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlvr_jax.model import decoder
from rlvr_jax.rollout import decoding, sampling
from rlvr_jax.rollout.sampling import SamplerWeights, Samples, SamplingSettings


class _LoopState(NamedTuple):
    step: jax.Array  # tokens produced so far (the next one goes here)
    last_r: jax.Array  # token fed to the model this step
    tokens_rn: jax.Array
    logprobs_rn: jax.Array
    lengths_r: jax.Array
    done_r: jax.Array
    caches: decoding.Cache


def _record(state: _LoopState, tokens_r, logprobs_r, settings) -> _LoopState:
    """Writes step `state.step`'s tokens into the buffers and updates `done`."""
    live_r = ~state.done_r
    tokens_r = jnp.where(live_r, tokens_r, settings.pad_id)
    logprobs_r = jnp.where(live_r, logprobs_r, 0.0)
    step = state.step
    return state._replace(
        step=step + 1,
        last_r=tokens_r,
        tokens_rn=jax.lax.dynamic_update_slice(
            state.tokens_rn, tokens_r[:, None], (0, step)
        ),
        logprobs_rn=jax.lax.dynamic_update_slice(
            state.logprobs_rn, logprobs_r[:, None], (0, step)
        ),
        lengths_r=jnp.where(live_r, step + 1, state.lengths_r),
        done_r=state.done_r | (live_r & sampling.is_eos(tokens_r, settings.eos_ids)),
    )


def _step_keys(row_keys_r: jax.Array, step: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys_r, step)


def _decode_step(
    config, weights, state, row_keys_r, prompt_len_r, valid_rs, settings
) -> _LoopState:
    """One iteration of the decode loop: the body of `_decode_loop`.

    Args:
      config: the model.
      weights: `decoding.pack` output (made once, outside the loop).
      state: `_LoopState` whose last recorded token is fed to the model.
      row_keys_r: per-row base keys.
      prompt_len_r: int32 [R] real prompt tokens per row.
      valid_rs: bool [R, S] cache slots holding real tokens (the prompt mask,
        then every response slot; causality hides slots not yet written).
      settings: `SamplingSettings`.
    """
    # The token recorded at step j-1 has RoPE position prompt_len + j - 1
    # and goes to cache slot prompt_width + j - 1.
    prompt_width = valid_rs.shape[1] - settings.max_new_tokens
    logits_rv, caches = decoding.step(
        config,
        weights,
        state.caches,
        state.last_r,
        prompt_len_r + state.step - 1,
        prompt_width + state.step - 1,
        valid_rs,
    )
    tokens_r, logprobs_r = sampling.choose(
        logits_rv, _step_keys(row_keys_r, state.step), settings
    )
    return _record(state._replace(caches=caches), tokens_r, logprobs_r, settings)


def _decode_loop(config, weights, state, row_keys_r, prompt_len_r, valid_rs, settings):
    """Runs `_decode_step` in a while_loop from a state whose first token is
    recorded, until every row is done or `max_new_tokens` tokens exist."""

    def cond(state: _LoopState):
        return (state.step < settings.max_new_tokens) & ~jnp.all(state.done_r)

    def body(state: _LoopState):
        return _decode_step(
            config, weights, state, row_keys_r, prompt_len_r, valid_rs, settings
        )

    return jax.lax.while_loop(cond, body, state)


def _sample(
    config,
    weights: SamplerWeights,
    prompt_tokens_bt,
    prompt_mask_bt,
    key,
    row_offset,
    settings,
):
    b, t = prompt_tokens_bt.shape
    n, new = settings.n, settings.max_new_tokens
    params = weights.prefill
    prompt_mask_bt = prompt_mask_bt.astype(bool)

    # ---- prefill: once per prompt, through the learner's own forward; the
    # logits are only taken at the last (real) position.
    cache = decoder.init_cache(config, b, t, settings.cache_dtype)
    x_btd, cache = decoder.hidden(
        config,
        params,
        prompt_tokens_bt,
        decoder.positions_from_mask(prompt_mask_bt),
        prompt_mask_bt,
        cache,
    )
    logits_bv = decoder.head(config, params, x_btd[:, -1:])[:, 0]

    # ---- decode-layout caches of prompt + response slots, repeated n times
    # so the n samples of a prompt share its prefill.
    caches, valid_rs = decoding.cache_from_prefill(cache, new, n, settings.cache_dtype)
    logits_rv = decoding.repeat_rows(logits_bv, n, axis=0)
    prompt_len_r = decoding.repeat_rows(
        prompt_mask_bt.sum(-1, dtype=jnp.int32), n, axis=0
    )
    r = b * n
    rows_r = row_offset + jnp.arange(r, dtype=jnp.int32)
    row_keys_r = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows_r)

    # ---- first token from the prefill logits, then the decode loop.
    state = _LoopState(
        step=jnp.zeros((), jnp.int32),
        last_r=jnp.zeros((r,), jnp.int32),
        tokens_rn=jnp.full((r, new), settings.pad_id, jnp.int32),
        logprobs_rn=jnp.zeros((r, new), jnp.float32),
        lengths_r=jnp.zeros((r,), jnp.int32),
        done_r=jnp.zeros((r,), bool),
        caches=caches,
    )
    tokens_r, logprobs_r = sampling.choose(
        logits_rv, _step_keys(row_keys_r, state.step), settings
    )
    state = _record(state, tokens_r, logprobs_r, settings)
    state = _decode_loop(
        config, weights.decode, state, row_keys_r, prompt_len_r, valid_rs, settings
    )
    return Samples(
        tokens_rn=state.tokens_rn,
        logprobs_rn=state.logprobs_rn,
        lengths_r=state.lengths_r,
        truncated_r=~state.done_r,
        steps=state.step,
        # The first token comes from the prefill, not from a loop iteration.
        decode_steps=state.step - 1,
    )


_sample_jit = jax.jit(_sample, static_argnames=("config", "settings"))


def sample(
    config: decoder.ModelConfig,
    params: sampling.Params,
    prompt_tokens_bt: jax.Array,
    prompt_mask_bt: jax.Array,
    key: jax.Array,
    row_offset: int | jax.Array = 0,
    *,
    settings: SamplingSettings,
) -> Samples:
    """Jitted prefill + decode of one left-padded prompt batch.

    Compiles once per (config, settings, batch shape, prompt width); call it
    with `pad_prompts` output so widths fall into a few buckets. Inputs may be
    sharded (e.g. params over an `fsdp` mesh axis, prompts over `data`); the
    result is the same as on one device.

    Args:
      config: the architecture (static).
      params: the parameter pytree (fp32 master weights or already cast),
        or `prepare` output; pass the latter when several calls (chunks) use
        the same params.
      prompt_tokens_bt: int [B, T] left-padded prompt tokens.
      prompt_mask_bt: bool [B, T], True on real tokens; every row needs one.
      key: a `jax.random.key` (or raw uint32 key); unused when greedy.
      row_offset: index of this batch's first response row in the whole
        rollout (traced: changing it does not recompile). Row keys derive from
        it, so chunked and unchunked rollouts draw the same tokens.
      settings: static `SamplingSettings`.

    Returns:
      `Samples` with R = B * settings.n prompt-major rows.
    """
    return _sample_jit(
        config,
        sampling.prepare(config, params),
        prompt_tokens_bt,
        prompt_mask_bt,
        key,
        jnp.asarray(row_offset, jnp.int32),
        settings=settings,
    )

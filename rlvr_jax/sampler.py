"""Batched generation: one prefill per prompt, then a jitted decode loop.

The sampler and the learner share the model code and the same parameter
pytree; there is no second inference engine. `prepare` casts the
params to the compute dtype and lays them out for decoding (`decoding.pack`:
fused, [out, in], per layer) once per rollout, in its own jitted call. Then
everything runs on device, without a host round trip per token:

  1. prefill the left-padded prompt batch with the learner's forward
     (`model.hidden`, layers scanned); logits are only taken at the last
     position, so no [B, T, V] tensor is ever built;
  2. the decode loop, a `jax.lax.while_loop` of `decoding.step` (the
     model's math for one position per row, caches updated in place),
     filling fixed-size token / log-prob buffers.

`continuous` is the rollout path (`rollout`, and `generate` over it):
continuous batching over a fixed number of decode slots. Each slot serves
one (prompt, sample) row at a time; when its row ends (EOS or
max_new_tokens) it takes the next pending row, copying that prompt's
prefilled keys/values into its cache and drawing the row's first token from
the prompt's prefill logits (the n samples of a prompt share its prefill).
The bookkeeping (which slot takes which row, when) is `scheduler`. Slots are
at different positions, so each writes its own cache column, and attention
reads the caches block by block only up to the longest live row.

`sample` decodes one prompt batch as a whole (every row in the batch until
the last one ends): the static-batch reference the tests hold `continuous`
to, and a building block for benchmarks.

Axis legend for tensor-name suffixes (extends the one in `model.py`):
  b  prompt rows                t  prompt positions (left-padded width)
  r  response rows, r = b * n (prompt-major: row i*n + j is sample j of prompt i)
  n  generated-token positions (max_new_tokens)
  v  vocabulary                 c  kept candidates (top-k)
  s  decode slots (`continuous`; in `valid_rs`, cache positions)
  w  a slot cache's width (prompt + response columns)

Log-prob convention. `logprobs_rn[i, j]` is the log-probability of the sampled
token under the *temperature-scaled full-vocabulary* distribution,
`log_softmax(logits / T)`, in fp32: exactly what GRPO's old log-probs are
(the learner computes `log_softmax(logits / T)` too). Top-k / top-p only
restrict which tokens may be drawn; they do not renormalise the returned
log-prob (with the recipe's top_p=1, top_k=0 the two notions coincide). For
greedy decoding (temperature 0) the log-prob is `log_softmax(logits)` (T = 1).
Positions after a row's EOS hold `pad_id` and log-prob 0.

Randomness. Row `r` at decode step `j` draws with the key
`fold_in(fold_in(key, row_offset + r), j)`: deterministic for a key,
independent across rows, and independent of how a rollout is split into
chunks or slots, or sharded over devices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import decoding, model, packing, scheduler, sharding

Params = Any


# ---------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Static sampling hyperparameters (hashable: a jit static argument).

    Attributes:
      max_new_tokens: size N of the response buffers; generation stops here.
      temperature: T; 0 means greedy (argmax).
      top_p: nucleus mass in (0, 1]; 1 disables it.
      top_k: keep the k most likely tokens; 0 disables it.
      eos_ids: token ids that end a response (the EOS is included in it).
        Empty: never stop early.
      n: samples per prompt.
      cache_dtype: dtype of the KV cache.
      pad_id: token written after a row's EOS.
    """

    max_new_tokens: int
    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    eos_ids: tuple[int, ...] = ()
    n: int = 1
    cache_dtype: str = "bfloat16"
    pad_id: int = 0

    def __post_init__(self):
        eos = self.eos_ids
        if isinstance(eos, (int, np.integer)):
            eos = (eos,)
        object.__setattr__(self, "eos_ids", tuple(int(e) for e in eos))
        _check(
            isinstance(self.max_new_tokens, (int, np.integer))
            and self.max_new_tokens > 0,
            "max_new_tokens",
            f"must be a positive integer, got {self.max_new_tokens!r}",
        )
        _check(
            math.isfinite(self.temperature) and self.temperature >= 0,
            "temperature",
            f"must be >= 0 (0 = greedy), got {self.temperature!r}",
        )
        _check(
            0.0 < self.top_p <= 1.0,
            "top_p",
            f"must be in (0, 1], got {self.top_p!r}",
        )
        _check(self.top_k >= 0, "top_k", f"must be >= 0, got {self.top_k!r}")
        _check(self.n >= 1, "n", f"must be >= 1, got {self.n!r}")
        _check(
            all(e >= 0 for e in self.eos_ids),
            "eos_ids",
            f"must be non-negative token ids, got {self.eos_ids!r}",
        )
        try:
            jnp.dtype(self.cache_dtype)
        except TypeError as e:
            raise ValueError(f"cache_dtype: unknown dtype {self.cache_dtype!r}") from e

    def check_against(self, config: model.ModelConfig) -> None:
        """Raises ValueError if the settings do not fit the model's vocabulary."""
        bad = [e for e in self.eos_ids if e >= config.vocab_size]
        _check(
            not bad,
            "eos_ids",
            f"unknown EOS ids {bad}: vocab_size is {config.vocab_size}",
        )
        _check(
            self.top_k <= config.vocab_size,
            "top_k",
            f"{self.top_k} exceeds vocab_size {config.vocab_size}",
        )
        _check(
            0 <= self.pad_id < config.vocab_size,
            "pad_id",
            f"{self.pad_id} is outside the vocabulary [0, {config.vocab_size})",
        )


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")


class Samples(NamedTuple):
    """Device-side result of `sample` (r = prompts * n rows).

    Attributes:
      tokens_rn: int32 [R, N] generated tokens, `pad_id` after the EOS.
      logprobs_rn: fp32 [R, N] log-prob of each token (see module docstring),
        0 after the EOS.
      lengths_r: int32 [R] number of generated tokens, EOS included.
      truncated_r: bool [R] True when the row hit max_new_tokens without EOS.
      steps: int32 scalar, the longest row's length (the prefill's first
        token included); below N when every row stopped early.
      decode_steps: int32 scalar, decode-loop iterations executed (each one
        a `decoding.step` over every row or slot).
    """

    tokens_rn: jax.Array
    logprobs_rn: jax.Array
    lengths_r: jax.Array
    truncated_r: jax.Array
    steps: jax.Array
    decode_steps: jax.Array


@dataclasses.dataclass(frozen=True)
class Rollout:
    """Host-side result of `rollout` / `generate` (numpy arrays, prompt-major rows).

    Attributes:
      tokens: int32 [R, N] with R = len(prompts) * n; row i*n + j is sample j
        of prompt i; `pad_id` after a row's EOS.
      logprobs: fp32 [R, N] log-probs under logits / T (0 after the EOS).
      lengths: int32 [R] response lengths including the EOS token.
      truncated: bool [R] True when a row stopped at max_new_tokens, not EOS.
      prompt_index: int32 [R] index into `prompts` of each row.
      prompt_tokens: int32 [R, W] each row's left-padded prompt (the
        learner's batch is built from these and the responses).
      prompt_mask: bool [R, W] True on real prompt tokens.
      decode_steps: decode-loop iterations the rollout took.
      slots: rows decoded at once.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray
    prompt_index: np.ndarray
    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    decode_steps: int
    slots: int

    @property
    def slot_efficiency(self) -> float:
        """Generated tokens / (slots × decode steps): the share of the
        sampler's (slot, step) cells that produced a token."""
        cells = self.slots * self.decode_steps
        return float(self.lengths.sum()) / max(cells, 1)

    @property
    def finish_reason(self) -> list[str]:
        """Per row "stop" (ended on an EOS id) or "length" (truncated)."""
        return ["length" if t else "stop" for t in self.truncated]


# ------------------------------------------------------------------ prompts
def bucket_width(length: int, buckets: Sequence[int] | None = None) -> int:
    """The padded prompt width for a longest prompt of `length` tokens.

    With `buckets`, the smallest bucket that fits; otherwise the next power of
    two (at least 16), so a training run compiles `sample` for a handful of
    widths only.
    """
    if buckets is None:
        return packing.power_of_two(length, 16)
    fitting = [b for b in sorted(buckets) if b >= length]
    _check(
        bool(fitting),
        "prompts",
        f"the longest prompt has {length} tokens, more than the largest "
        f"bucket {max(buckets)}",
    )
    return fitting[0]


def pad_prompts(
    prompts: Sequence[Sequence[int]],
    buckets: Sequence[int] | None = None,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to a bucketed width.

    Args:
      prompts: B non-empty lists of token ids.
      buckets: allowed widths (see `bucket_width`).
      pad_id: filler token (masked out; its value never matters).

    Returns:
      (tokens_bt int32, mask_bt bool), mask True on real tokens. Left padding
      puts every row's last prompt token in the last column.
    """
    _check(len(prompts) > 0, "prompts", "is empty")
    for i, p in enumerate(prompts):
        _check(len(p) > 0, "prompts", f"prompts[{i}] is empty")
    width = bucket_width(max(len(p) for p in prompts), buckets)
    tokens_bt = np.full((len(prompts), width), pad_id, np.int32)
    mask_bt = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        tokens_bt[i, width - len(p) :] = p
        mask_bt[i, width - len(p) :] = True
    return tokens_bt, mask_bt


# ------------------------------------------------------------- token choice
def _truncate(scaled_rv: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Sets logits outside the top-k / top-p set to -inf (HF/vLLM order).

    Top-k is applied first, then top-p on the renormalised top-k set. A token
    tied with the last kept one is kept too (as in `transformers`).
    """
    if top_k == 0 and top_p >= 1.0:
        return scaled_rv
    if top_k > 0:
        sorted_rc = jax.lax.top_k(scaled_rv, top_k)[0]  # descending
    else:
        # A full-vocabulary sort per step: costly, only paid when top_p < 1.
        sorted_rc = -jnp.sort(-scaled_rv, axis=-1)
    if top_p < 1.0:
        probs_rc = jax.nn.softmax(sorted_rc, axis=-1)
        mass_before_rc = jnp.cumsum(probs_rc, axis=-1) - probs_rc
        # The most likely token always has 0 mass before it, so it stays.
        keep_rc = mass_before_rc < top_p
        cutoff_r = jnp.min(jnp.where(keep_rc, sorted_rc, jnp.inf), axis=-1)
    else:
        cutoff_r = sorted_rc[:, -1]
    return jnp.where(scaled_rv >= cutoff_r[:, None], scaled_rv, -jnp.inf)


def _choose(
    logits_rv: jax.Array, keys_r: jax.Array, settings: SamplingSettings
) -> tuple[jax.Array, jax.Array]:
    """Picks one token per row; returns (tokens_r int32, logprobs_r fp32)."""
    logits_rv = logits_rv.astype(jnp.float32)
    if settings.temperature == 0:
        tokens_r = jnp.argmax(logits_rv, axis=-1).astype(jnp.int32)
        scaled_rv = logits_rv
    else:
        scaled_rv = logits_rv / settings.temperature
        allowed_rv = _truncate(scaled_rv, settings.top_k, settings.top_p)
        tokens_r = jax.vmap(jax.random.categorical)(keys_r, allowed_rv)
        tokens_r = tokens_r.astype(jnp.int32)
    # log_softmax at one index without materialising a second [R, V] array.
    picked_r = jnp.take_along_axis(scaled_rv, tokens_r[:, None], axis=-1)[:, 0]
    return tokens_r, picked_r - jax.nn.logsumexp(scaled_rv, axis=-1)


def _is_eos(tokens_r: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(tokens_r.shape, bool)
    return jnp.any(tokens_r[:, None] == jnp.asarray(eos_ids, jnp.int32), axis=-1)


# ------------------------------------------------------------------- decode
def compute_dtype_params(config: model.ModelConfig, params: Params) -> Params:
    """Casts matmul weights to the compute dtype once, ahead of the prefill.

    The model casts each fp32 weight to `config.dtype` at every use; casting
    once here lets the prefill read half the bytes. Results are bit-identical:
    norm scales, which the model reads in fp32, are left alone. Called outside
    a jit, leaves already in the compute dtype are returned as they are (no
    copy).
    """
    compute = jnp.dtype(config.dtype)

    def cast(path, x):
        if path[-1] == jax.tree_util.DictKey("scale"):
            return x
        if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != compute:
            return x.astype(compute)
        return x

    return jax.tree_util.tree_map_with_path(cast, params)


class SamplerWeights(NamedTuple):
    """The params laid out for sampling: made once per rollout by `prepare`.

    Attributes:
      prefill: the parameter pytree read by the prompt prefill
        (`model.hidden`): on CPU a copy with the matmul weights in the compute
        dtype (`compute_dtype_params`); elsewhere the caller's params themselves.
      decode: `decoding.pack` output, read by the decode loop.
    """

    prefill: Params
    decode: decoding.Weights


def prepare(
    config: model.ModelConfig,
    params: Params,
    *,
    decode_sharding: jax.sharding.Sharding | None = None,
    platform: str | None = None,
) -> SamplerWeights:
    """Casts and packs `params` for `sample`; a no-op on `SamplerWeights`.

    Call it once per set of params and pass the result to every sampler call
    that uses them: each then skips the cast and the pack. The result
    holds one more copy of the weights (the packed one) for as long as it is
    kept. The pack runs in its own jitted call, so the decode loop reads the
    packed weights as arguments of its executable, which XLA:CPU runs faster
    than a pack inside the same executable (`benchmarks/pack_placement.py`
    measures it).

    Off CPU the prefill reads `params` as they are (the model casts each
    weight at use): a prefill is compute-bound, so a compute-dtype copy for
    it would only cost memory (`python -m rlvr_jax.plan` shows it).

    Args:
      config: the model.
      params: the parameter pytree.
      decode_sharding: placement of the packed weights, e.g. replicated, so
        that decode steps read local weights instead of gathering sharded
        ones every step; None lets the compiler follow the params' sharding.
      platform: where the weights will run ('cpu', 'tpu', 'gpu'); default:
        where `params` are (planning passes its target's).
    """
    if isinstance(params, SamplerWeights):
        return params
    platform = platform or _platform(params)
    on_cpu = platform == "cpu"
    return SamplerWeights(
        prefill=compute_dtype_params(config, params) if on_cpu else params,
        decode=_pack_jit(
            config, params, "float32" if on_cpu else config.dtype, decode_sharding
        ),
    )


def _pack_jit(config, params, dtype, sharding=None) -> decoding.Weights:
    """`decoding.pack` in a jitted call of its own, output placed by `sharding`."""
    return _pack_compiled(sharding)(config, params, dtype)


@functools.cache
def _pack_compiled(sharding):
    return jax.jit(decoding.pack, static_argnums=(0, 2), out_shardings=sharding)


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
        done_r=state.done_r | (live_r & _is_eos(tokens_r, settings.eos_ids)),
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
    tokens_r, logprobs_r = _choose(
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
    cache = model.init_cache(config, b, t, settings.cache_dtype)
    x_btd, cache = model.hidden(
        config,
        params,
        prompt_tokens_bt,
        model.positions_from_mask(prompt_mask_bt),
        prompt_mask_bt,
        cache,
    )
    logits_bv = model.head(config, params, x_btd[:, -1:])[:, 0]

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
    tokens_r, logprobs_r = _choose(
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


def decode_weights_dtype(config: model.ModelConfig, params: Params) -> str:
    """Storage dtype of the decode-layout weights for params on their devices.

    The compute dtype, except on CPU, where bf16 weights are stored as fp32
    (exactly, once per rollout): XLA:CPU has no bf16 matmul kernels and would
    convert every weight at every decode step.
    """
    return "float32" if _platforms(params) == {"cpu"} else config.dtype


def _platforms(params: Params) -> set[str]:
    """Platforms holding the params (the default backend for host/abstract ones)."""
    leaf = jax.tree.leaves(params)[0]
    if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
        return {d.platform for d in leaf.devices()}
    return {jax.default_backend()}


def _platform(params: Params) -> str:
    """The one platform holding the params ('cpu' only when all are on CPU)."""
    platforms = _platforms(params)
    return "cpu" if platforms == {"cpu"} else sorted(platforms - {"cpu"})[0]


def sample(
    config: model.ModelConfig,
    params: Params,
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
        prepare(config, params),
        prompt_tokens_bt,
        prompt_mask_bt,
        key,
        jnp.asarray(row_offset, jnp.int32),
        settings=settings,
    )


# ------------------------------------------------------ continuous batching
ATTENTION_BLOCK = 128  # cache slots per attention block (see `continuous`)


class _SlotState(NamedTuple):
    """The continuous loop's payload (s = slots, w = cache width)."""

    caches: decoding.Cache  # [S, K, H, W] keys, [S, K, W, H] values
    valid_sw: jax.Array  # the slot's prompt mask, then every response slot
    prompt_len_s: jax.Array  # real prompt tokens of the slot's row
    last_s: jax.Array  # the slot's last token (fed to the next step)
    tokens_rn: jax.Array
    logprobs_rn: jax.Array
    lengths_r: jax.Array
    ended_r: jax.Array  # the row drew an EOS id


def _slot_keys(key, row_offset, row_s, step_s) -> jax.Array:
    """`fold_in(fold_in(key, row_offset + row), step)` per slot: the module's
    randomness rule, so a row draws the same tokens in whichever slot."""
    row_keys_s = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        key, row_offset + row_s
    )
    return jax.vmap(jax.random.fold_in)(row_keys_s, step_s)


def _record_slots(slots, state, tokens_s, logprobs_s, produced_s, settings):
    """Writes the `produced_s` slots' tokens at (row, step) of the buffers."""
    # Slots that produced nothing write out of bounds: dropped.
    row_s = jnp.where(produced_s, slots.row_s, state.tokens_rn.shape[0])
    step_s = slots.step_s
    eos_s = _is_eos(tokens_s, settings.eos_ids)
    state = state._replace(
        last_s=jnp.where(produced_s, tokens_s, state.last_s),
        tokens_rn=state.tokens_rn.at[row_s, step_s].set(tokens_s, mode="drop"),
        logprobs_rn=state.logprobs_rn.at[row_s, step_s].set(logprobs_s, mode="drop"),
        lengths_r=state.lengths_r.at[row_s].set(step_s + 1, mode="drop"),
        ended_r=state.ended_r.at[row_s].set(eos_s, mode="drop"),
    )
    slots = scheduler.record(slots, produced_s, eos_s, settings.max_new_tokens)
    return slots, state


def _slot_decode_step(
    config,
    decode_weights,
    state: _SlotState,
    slots: scheduler.Slots,
    key,
    row_offset,
    *,
    settings,
    prompt_width,
    block,
):
    """One decode step of every slot; live slots record their token.

    The continuous loop's `advance` (its body's cost is counted per step by
    `plan`). Attention reads `block`-slot blocks up to the longest live row.
    """
    # The token recorded at step j-1 has RoPE position prompt_len + j - 1
    # and goes to cache column prompt_width + j - 1.
    step_s = slots.step_s
    longest = jnp.max(jnp.where(slots.live_s, step_s, 0))
    blocks = (prompt_width + longest + block - 1) // block
    if block >= state.valid_sw.shape[1]:
        block = blocks = None  # one block: the plain whole-cache attention
    logits_sv, caches = decoding.step(
        config,
        decode_weights,
        state.caches,
        state.last_s,
        state.prompt_len_s + step_s - 1,
        prompt_width + step_s - 1,
        state.valid_sw,
        block=block,
        blocks=blocks,
    )
    tokens_s, logprobs_s = _choose(
        logits_sv, _slot_keys(key, row_offset, slots.row_s, step_s), settings
    )
    state = state._replace(caches=caches)
    return _record_slots(slots, state, tokens_s, logprobs_s, slots.live_s, settings)


def _continuous(
    config,
    weights: SamplerWeights,
    prompt_tokens_bt,
    prompt_mask_bt,
    key,
    row_offset,
    rows,
    settings,
    slots,
    refill_every,
    block,
    slot_sharding,
):
    b, t = prompt_tokens_bt.shape
    n, new = settings.n, settings.max_new_tokens
    r = b * n
    prompt_mask_bt = prompt_mask_bt.astype(bool)

    # ---- prefill: once per prompt, through the learner's own forward; its
    # n samples all start from these keys/values and last-position logits.
    # The prompts stay split as the slots are: with fsdp-sharded weights the
    # compiler otherwise keeps the weights in place and runs every prompt on
    # every chip, activations split over the model dimension (a 7B prefill
    # of 128 prompts then holds whole [B, T, F] MLP activations per chip).
    constrain_rows = _rows_constraint(slot_sharding)
    cache = model.init_cache(config, b, t, settings.cache_dtype)
    x_btd, cache = model.hidden(
        config,
        weights.prefill,
        prompt_tokens_bt,
        model.positions_from_mask(prompt_mask_bt),
        prompt_mask_bt,
        cache,
        constrain=constrain_rows,
    )
    logits_bv = model.head(config, weights.prefill, x_btd[:, -1:])[:, 0]
    store, _ = decoding.cache_from_prefill(cache, 0, 1, settings.cache_dtype)
    store = _split_positions(store, slot_sharding)
    prompt_len_b = prompt_mask_bt.sum(-1, dtype=jnp.int32)

    # ---- slot caches: the prompt's columns, then the response's, rounded up
    # to whole attention blocks (never-written columns are never attended).
    width = -(-(t + new) // block) * block
    k, h = config.n_kv_heads, config.head_dim
    dtype = jnp.dtype(settings.cache_dtype)

    def placed(x):
        if slot_sharding is None:
            return x
        return jax.lax.with_sharding_constraint(x, slot_sharding)

    state = _SlotState(
        caches=decoding.Cache(
            k=tuple(placed(jnp.zeros((slots, k, h, width), dtype)) for _ in store.k),
            v=tuple(placed(jnp.zeros((slots, k, width, h), dtype)) for _ in store.v),
        ),
        valid_sw=placed(jnp.ones((slots, width), bool)),
        prompt_len_s=placed(jnp.ones((slots,), jnp.int32)),
        last_s=placed(jnp.zeros((slots,), jnp.int32)),
        tokens_rn=jnp.full((r, new), settings.pad_id, jnp.int32),
        logprobs_rn=jnp.zeros((r, new), jnp.float32),
        lengths_r=jnp.zeros((r,), jnp.int32),
        ended_r=jnp.zeros((r,), bool),
    )

    def start(slots_, new_s, state):
        """New rows: their prompt's cache and mask, and the first token."""
        b_s = jnp.minimum(slots_.row_s // n, b - 1)

        def fill(slot_x, store_x, axis):
            prompt_x = jnp.take(store_x, b_s, axis=0)
            head_x = jax.lax.slice_in_dim(slot_x, 0, t, axis=axis)
            new_x = new_s.reshape((-1,) + (1,) * (slot_x.ndim - 1))
            return jax.lax.dynamic_update_slice_in_dim(
                slot_x, jnp.where(new_x, prompt_x, head_x), 0, axis
            )

        state = state._replace(
            caches=decoding.Cache(
                k=tuple(fill(a, p, 3) for a, p in zip(state.caches.k, store.k)),
                v=tuple(fill(a, p, 2) for a, p in zip(state.caches.v, store.v)),
            ),
            valid_sw=fill(state.valid_sw, prompt_mask_bt, 1),
            prompt_len_s=jnp.where(
                new_s, jnp.take(prompt_len_b, b_s), state.prompt_len_s
            ),
        )
        tokens_s, logprobs_s = _choose(
            jnp.take(logits_bv, b_s, axis=0),
            _slot_keys(key, row_offset, slots_.row_s, slots_.step_s),
            settings,
        )
        return _record_slots(slots_, state, tokens_s, logprobs_s, new_s, settings)

    def advance(slots_, state):
        return _slot_decode_step(
            config,
            weights.decode,
            state,
            slots_,
            key,
            row_offset,
            settings=settings,
            prompt_width=t,
            block=block,
        )

    done, state = scheduler.run(
        scheduler.empty(slots, rows),
        state,
        rows=rows,
        refill_every=refill_every,
        start=start,
        advance=advance,
    )
    return Samples(
        tokens_rn=state.tokens_rn,
        logprobs_rn=state.logprobs_rn,
        lengths_r=state.lengths_r,
        truncated_r=~state.ended_r,
        steps=jnp.max(state.lengths_r),
        decode_steps=done.decode_steps,
    )


_continuous_jit = jax.jit(
    _continuous,
    static_argnames=(
        "config",
        "settings",
        "slots",
        "refill_every",
        "block",
        "slot_sharding",
    ),
)


def _split_like_slots(x: jax.Array, axis: int, slot_sharding) -> jax.Array:
    """`x` with `axis` split as `slot_sharding` splits the slots' (leading)
    axis; unchanged without a `NamedSharding`. An axis that does not divide
    is left to the compiler (`sharding.fit_spec`)."""
    if not isinstance(slot_sharding, jax.sharding.NamedSharding) or not len(
        slot_sharding.spec
    ):
        return x
    spec = [None] * x.ndim
    spec[axis] = slot_sharding.spec[0]
    mesh = slot_sharding.mesh
    spec = sharding.fit_spec(jax.sharding.PartitionSpec(*spec), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))


def _rows_constraint(slot_sharding):
    """The model's `constrain` hook pinning rows as the slots are split
    (None without a `NamedSharding`)."""
    if not isinstance(slot_sharding, jax.sharding.NamedSharding):
        return None
    return lambda x: _split_like_slots(x, 0, slot_sharding)


def _split_positions(store: decoding.Cache, slot_sharding) -> decoding.Cache:
    """The prompt store split over its prompt positions, not its prompts.

    A refill takes whole prompts (any prompt, into any slot): from a store
    split by prompt the compiler gathers every prompt's keys/values onto
    every chip (for a 7B model's 128 prompts, 134 MB per layer and cache).
    Split by position, the take over the prompt axis is local and only the
    taken rows move to their slots' chips. Unchanged without a mesh.
    """
    # Keys are [B, K, H, T], values [B, K, T, H] (`decoding.Cache`).
    return decoding.Cache(
        k=tuple(_split_like_slots(x, 3, slot_sharding) for x in store.k),
        v=tuple(_split_like_slots(x, 2, slot_sharding) for x in store.v),
    )


def _shards(sharding: jax.sharding.Sharding | None) -> int:
    """How many parts a sharding splits an array's leading axis into."""
    if sharding is None:
        return 1
    big = math.prod(sharding.mesh.shape.values()) if hasattr(sharding, "mesh") else 1
    return big // sharding.shard_shape((big,))[0]


def continuous(
    config: model.ModelConfig,
    params: Params,
    prompt_tokens_bt: jax.Array,
    prompt_mask_bt: jax.Array,
    key: jax.Array,
    row_offset: int | jax.Array = 0,
    *,
    settings: SamplingSettings,
    slots: int,
    rows: int | jax.Array | None = None,
    refill_every: int = 8,
    block: int | None = None,
    slot_sharding: jax.sharding.Sharding | None = None,
) -> Samples:
    """Continuous batching: every response of the prompts through `slots` slots.

    The rollout's B * n rows (prompt-major) are decoded `slots` at a time:
    each prompt is prefilled once (all B together); a free slot takes the
    next row in row order, copies its prompt's keys/values into its cache,
    draws the row's first token from the prompt's prefill logits, and
    decodes until the row ends (EOS or max_new_tokens); then it takes the
    next row (`scheduler`: refills every `refill_every` decode steps). One
    jitted `while_loop`, no host round trip per token.

    A row's tokens depend only on (key, row_offset + row, position), as in
    `sample`: not on the slot count, the slot it ran in, or its neighbours.
    Attention reads the caches block by block up to the longest live row
    (`decoding.step`'s `block`), not their whole width.

    Args:
      config, params, prompt_tokens_bt, prompt_mask_bt, key, row_offset,
        settings: as for `sample`.
      slots: rows decoded at once (static); with `slot_sharding`, a multiple
        of its number of shards.
      rows: generate only the first `rows` rows (traced; default B * n):
        the rest are padding prompts, e.g. added to split B over a mesh.
        Their buffers stay `pad_id` / 0 with length 0.
      refill_every: decode steps between refills (static, >= 1).
      block: cache slots per attention block (static); default
        `ATTENTION_BLOCK` (or the whole cache when it is narrower), and on
        CPU the whole cache (one pass, no block loop). A block as wide as
        the cache uses the plain one-softmax attention.
      slot_sharding: placement of the slots' caches and state (rows split
        over the mesh's batch axes, e.g. `sharding.batch_sharding(mesh)`);
        a `NamedSharding` also keeps the prefill's prompts split so and
        splits the prompt store over its positions (`_split_positions`).
        None lets the compiler choose.

    Returns:
      `Samples` with R = B * n rows; `decode_steps` counts the loop's decode
      steps, so Σ lengths / (slots * decode_steps) is its slot efficiency.

    Raises:
      ValueError: `slots` < 1 or not a multiple of the shards, `block` < 1,
        `refill_every` < 1.
    """
    _check(
        isinstance(slots, (int, np.integer)) and slots >= 1,
        "slots",
        f"must be a positive integer, got {slots!r}",
    )
    shards = _shards(slot_sharding)
    _check(
        slots % shards == 0,
        "slots",
        f"{slots} slots do not split over the {shards} devices of the mesh's "
        "batch axes; use a multiple of that",
    )
    _check(
        isinstance(refill_every, (int, np.integer)) and refill_every >= 1,
        "refill_every",
        f"must be a positive integer, got {refill_every!r}",
    )
    b, t = np.shape(prompt_tokens_bt)
    width = t + settings.max_new_tokens
    if block is None:
        # XLA:CPU runs a loop over small blocks far slower than one pass over
        # the whole (host-memory) cache: one block there.
        on_cpu = _platform(params) == "cpu"
        block = width if on_cpu else min(ATTENTION_BLOCK, width)
    _check(block >= 1, "block", f"must be >= 1, got {block!r}")
    return _continuous_jit(
        config,
        prepare(config, params),
        prompt_tokens_bt,
        prompt_mask_bt,
        key,
        jnp.asarray(row_offset, jnp.int32),
        jnp.asarray(b * settings.n if rows is None else rows, jnp.int32),
        settings=settings,
        slots=int(slots),
        refill_every=int(refill_every),
        block=int(block),
        slot_sharding=slot_sharding,
    )


# ----------------------------------------------------------------- generate
def _check_prompts(config, prompts, max_new_tokens) -> None:
    _check(len(prompts) > 0, "prompts", "is empty")
    limit = config.max_seq_len - max_new_tokens
    for i, p in enumerate(prompts):
        _check(len(p) > 0, "prompts", f"prompts[{i}] is empty")
        _check(
            len(p) <= limit,
            "prompts",
            f"prompts[{i}] has {len(p)} tokens; with max_new_tokens="
            f"{max_new_tokens} the context max_seq_len={config.max_seq_len} "
            f"allows at most {limit}",
        )
        ids = np.asarray(p)
        _check(
            np.issubdtype(ids.dtype, np.integer)
            and ids.min() >= 0
            and ids.max() < config.vocab_size,
            "prompts",
            f"prompts[{i}] holds ids outside [0, {config.vocab_size})",
        )


def rollout(
    config: model.ModelConfig,
    params: Params,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    key: jax.Array,
    *,
    slots: int | None = None,
    buckets: Sequence[int] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    decode_sharding: jax.sharding.Sharding | None = None,
) -> Rollout:
    """Samples `settings.n` responses per prompt by continuous batching: the
    rollout path of training, in-training evaluation, `evaluate` and
    `generate`.

    Every prompt is prefilled once; `continuous` streams the responses
    through `slots` decode slots (rows decoded at once, the KV cache's row
    count; config `rollout.chunk_size`), rounded up to split over the mesh's
    batch axes and capped at the rollout's rows (None: all rows at once).

    With a `mesh`, prompts and slots are split over its batch axes
    (`sharding.batch_sharding`). Multi-process: every process passes the
    same prompts and feeds its own share (the prompt list is padded with
    copies of the last prompt to split over the mesh; their rows are never
    generated); every process gets all rows back. `decode_sharding` places
    the decode weights (see `prepare`).

    Returns:
      A `Rollout` with len(prompts) * n prompt-major rows, including the
      left-padded prompt tokens/mask [R, W] repeated per sample.
    """
    tokens_bt, mask_bt = pad_prompts(prompts, buckets, settings.pad_id)
    n = settings.n
    b = len(prompts)
    divisor = 1 if mesh is None else sharding.batch_divisor(mesh)
    pad = -b % divisor  # the prompt batch must split over the mesh
    fed_t = np.concatenate([tokens_bt, np.repeat(tokens_bt[-1:], pad, 0)])
    fed_m = np.concatenate([mask_bt, np.repeat(mask_bt[-1:], pad, 0)])
    if mesh is None:
        placed = {"t": fed_t, "m": fed_m}
    else:
        placed = sharding.shard_batch(
            mesh,
            {"t": sharding.process_rows(fed_t), "m": sharding.process_rows(fed_m)},
        )
    slots = b * n if slots is None else min(max(1, slots), b * n)
    slots += -slots % divisor
    out = continuous(
        config,
        prepare(config, params, decode_sharding=decode_sharding),
        placed["t"],
        placed["m"],
        key,
        settings=settings,
        slots=slots,
        rows=b * n,
        slot_sharding=None if mesh is None else sharding.batch_sharding(mesh),
    )
    host = sharding.to_host(
        {
            "tokens": out.tokens_rn,
            "logprobs": out.logprobs_rn,
            "lengths": out.lengths_r,
            "truncated": out.truncated_r,
        }
    )
    r = b * n
    return Rollout(
        tokens=np.asarray(host["tokens"][:r], np.int32),
        logprobs=np.asarray(host["logprobs"][:r], np.float32),
        lengths=np.asarray(host["lengths"][:r], np.int32),
        truncated=np.asarray(host["truncated"][:r], bool),
        prompt_index=np.repeat(np.arange(b, dtype=np.int32), n),
        prompt_tokens=np.repeat(tokens_bt, n, axis=0),
        prompt_mask=np.repeat(mask_bt, n, axis=0),
        decode_steps=int(sharding.local_value(out.decode_steps)),
        slots=slots,
    )


def generate(
    config: model.ModelConfig,
    params: Params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_ids: int | Sequence[int],
    seed: int,
    n: int = 1,
    slots: int | None = None,
    cache_dtype: str = "bfloat16",
    pad_id: int = 0,
    buckets: Sequence[int] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Rollout:
    """Samples `n` responses per prompt; the convenience entry point over
    `rollout` (checks the prompts, builds the settings and the key).

    Args:
      config: the architecture.
      params: the parameter pytree.
      prompts: token-id lists (any lengths; left-padded to a bucket width).
      max_new_tokens: response buffer length N.
      temperature: T (0 = greedy).
      top_p: nucleus mass in (0, 1].
      top_k: 0 disables.
      eos_ids: stop token id(s); empty disables stopping.
      seed: the sampling seed.
      n: samples per prompt.
      slots: rows decoded at once (bounds the KV cache; finished rows are
        refilled from the rest); None = all rows at once. Every prompt is
        still prefilled once, up front.
      cache_dtype: KV-cache dtype.
      pad_id: token written after EOS.
      buckets: prompt widths (see `bucket_width`).
      mesh: optional device mesh; prompts and slots split over its batch
        axes (padded up to a multiple of them).

    Returns:
      A `Rollout` with len(prompts) * n prompt-major rows.

    Raises:
      ValueError: naming the bad argument (empty prompt, prompt too long for
        the context, max_new_tokens <= 0, unknown EOS id, top_p outside
        (0, 1], slots < 1, ...).
    """
    settings = SamplingSettings(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        eos_ids=eos_ids,
        n=n,
        cache_dtype=cache_dtype,
        pad_id=pad_id,
    )
    settings.check_against(config)
    _check_prompts(config, prompts, max_new_tokens)
    _check(slots is None or slots >= 1, "slots", f"must be >= 1, got {slots!r}")
    return rollout(
        config,
        params,
        prompts,
        settings,
        jax.random.key(seed),
        slots=slots,
        buckets=buckets,
        mesh=mesh,
    )

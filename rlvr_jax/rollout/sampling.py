"""Sampling settings, token choice and the sampler's result types.

What every sampler shares: `SamplingSettings` (a hashable jit static
argument), the choice of one token per row from logits (`choose`: greedy, or
temperature with top-k / top-p), prompt padding to bucketed widths, the
sampler's weights (`prepare`: cast and packed once per rollout), and the
results (`Samples` on device, `Rollout` on the host).

Log-prob convention. `logprobs_rn[i, j]` is the log-probability of the sampled
token under the *temperature-scaled full-vocabulary* distribution,
`log_softmax(logits / T)`, in fp32: exactly what GRPO's old log-probs are
(the learner computes `log_softmax(logits / T)` too). Top-k / top-p only
restrict which tokens may be drawn; they do not renormalise the returned
log-prob (with the recipe's top_p=1, top_k=0 the two notions coincide). For
greedy decoding (temperature 0) the log-prob is `log_softmax(logits)` (T = 1).
Positions after a row's EOS hold `pad_id` and log-prob 0.

Axis legend: as in `rlvr_jax.rollout.engine`.
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

from rlvr_jax.learner import packing
from rlvr_jax.model import decoder
from rlvr_jax.rollout import decoding

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
        require(
            isinstance(self.max_new_tokens, (int, np.integer))
            and self.max_new_tokens > 0,
            "max_new_tokens",
            f"must be a positive integer, got {self.max_new_tokens!r}",
        )
        require(
            math.isfinite(self.temperature) and self.temperature >= 0,
            "temperature",
            f"must be >= 0 (0 = greedy), got {self.temperature!r}",
        )
        require(
            0.0 < self.top_p <= 1.0,
            "top_p",
            f"must be in (0, 1], got {self.top_p!r}",
        )
        require(self.top_k >= 0, "top_k", f"must be >= 0, got {self.top_k!r}")
        require(self.n >= 1, "n", f"must be >= 1, got {self.n!r}")
        require(
            all(e >= 0 for e in self.eos_ids),
            "eos_ids",
            f"must be non-negative token ids, got {self.eos_ids!r}",
        )
        try:
            jnp.dtype(self.cache_dtype)
        except TypeError as e:
            raise ValueError(f"cache_dtype: unknown dtype {self.cache_dtype!r}") from e

    def check_against(self, config: decoder.ModelConfig) -> None:
        """Raises ValueError if the settings do not fit the model's vocabulary."""
        bad = [e for e in self.eos_ids if e >= config.vocab_size]
        require(
            not bad,
            "eos_ids",
            f"unknown EOS ids {bad}: vocab_size is {config.vocab_size}",
        )
        require(
            self.top_k <= config.vocab_size,
            "top_k",
            f"{self.top_k} exceeds vocab_size {config.vocab_size}",
        )
        require(
            0 <= self.pad_id < config.vocab_size,
            "pad_id",
            f"{self.pad_id} is outside the vocabulary [0, {config.vocab_size})",
        )


def require(ok: bool, name: str, message: str) -> None:
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
      preemptions: rows a paged cache preempted (and restarted) for memory;
        0 for slot caches.
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
    preemptions: int = 0

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
    require(
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
    require(len(prompts) > 0, "prompts", "is empty")
    for i, p in enumerate(prompts):
        require(len(p) > 0, "prompts", f"prompts[{i}] is empty")
    width = bucket_width(max(len(p) for p in prompts), buckets)
    tokens_bt = np.full((len(prompts), width), pad_id, np.int32)
    mask_bt = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        tokens_bt[i, width - len(p) :] = p
        mask_bt[i, width - len(p) :] = True
    return tokens_bt, mask_bt


# ------------------------------------------------------------- token choice
def truncate(scaled_rv: jax.Array, top_k: int, top_p: float) -> jax.Array:
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


def choose(
    logits_rv: jax.Array, keys_r: jax.Array, settings: SamplingSettings
) -> tuple[jax.Array, jax.Array]:
    """Picks one token per row; returns (tokens_r int32, logprobs_r fp32)."""
    logits_rv = logits_rv.astype(jnp.float32)
    if settings.temperature == 0:
        tokens_r = jnp.argmax(logits_rv, axis=-1).astype(jnp.int32)
        scaled_rv = logits_rv
    else:
        scaled_rv = logits_rv / settings.temperature
        allowed_rv = truncate(scaled_rv, settings.top_k, settings.top_p)
        tokens_r = jax.vmap(jax.random.categorical)(keys_r, allowed_rv)
        tokens_r = tokens_r.astype(jnp.int32)
    # log_softmax at one index without materialising a second [R, V] array.
    picked_r = jnp.take_along_axis(scaled_rv, tokens_r[:, None], axis=-1)[:, 0]
    return tokens_r, picked_r - jax.nn.logsumexp(scaled_rv, axis=-1)


def is_eos(tokens_r: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(tokens_r.shape, bool)
    return jnp.any(tokens_r[:, None] == jnp.asarray(eos_ids, jnp.int32), axis=-1)


# ------------------------------------------------------------------- decode
def compute_dtype_params(config: decoder.ModelConfig, params: Params) -> Params:
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
    config: decoder.ModelConfig,
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
    platform = platform or platform_of(params)
    return SamplerWeights(
        prefill=compute_dtype_params(config, params) if platform == "cpu" else params,
        decode=_pack_jit(config, params, pack_dtype(config, platform), decode_sharding),
    )


def pack_dtype(config: decoder.ModelConfig, platform: str) -> str:
    """Storage dtype of the packed decode weights on `platform`: the compute
    dtype, except fp32 on CPU (XLA:CPU has no bf16 matmul kernels and would
    convert every weight at every decode step)."""
    return "float32" if platform == "cpu" else config.dtype


def _pack_jit(config, params, dtype, sharding=None) -> decoding.Weights:
    """`decoding.pack` in a jitted call of its own, output placed by `sharding`."""
    return _pack_program(sharding)(config, params, dtype)


@functools.cache
def _pack_program(sharding):
    return jax.jit(decoding.pack, static_argnums=(0, 2), out_shardings=sharding)


def lower_prepare(
    config: decoder.ModelConfig,
    params: Params,
    *,
    decode_sharding: jax.sharding.Sharding | None = None,
    platform: str,
) -> jax.stages.Lowered:
    """The program `prepare` runs on `platform` (the pack), lowered for
    abstract `params` (ShapeDtypeStructs with their shardings). The prefill's
    weights are the params themselves off CPU: the pack is the whole program."""
    return _pack_program(decode_sharding).lower(
        config, params, pack_dtype(config, platform)
    )


def abstract_weights(
    config: decoder.ModelConfig, params: Params, decode_shardings: Any, platform: str
) -> SamplerWeights:
    """ShapeDtypeStructs of `prepare(config, params)` on `platform`.

    Args:
      config: the model.
      params: abstract params with their shardings.
      decode_shardings: where the packed weights live: one sharding for every
        leaf, or a pytree of them (a compiled `lower_prepare`'s output
        shardings).
      platform: 'cpu', 'tpu' or 'gpu'.
    """
    dtype = pack_dtype(config, platform)
    decode = jax.eval_shape(lambda p: decoding.pack(config, p, dtype), params)
    if isinstance(decode_shardings, jax.sharding.Sharding):
        decode_shardings = jax.tree.map(lambda _: decode_shardings, decode)
    decode = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        decode,
        decode_shardings,
    )
    prefill = params
    if platform == "cpu":
        cast = jax.eval_shape(lambda p: compute_dtype_params(config, p), params)
        prefill = jax.tree.map(
            lambda a, p: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=p.sharding),
            cast,
            params,
        )
    return SamplerWeights(prefill=prefill, decode=decode)


def decode_weights_dtype(config: decoder.ModelConfig, params: Params) -> str:
    """Storage dtype of the decode-layout weights for params on their devices.

    The compute dtype, except on CPU, where bf16 weights are stored as fp32
    (exactly, once per rollout): XLA:CPU has no bf16 matmul kernels and would
    convert every weight at every decode step.
    """
    return pack_dtype(config, platform_of(params))


def platforms_of(params: Params) -> set[str]:
    """Platforms holding the params (the default backend for host/abstract ones)."""
    leaf = jax.tree.leaves(params)[0]
    if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
        return {d.platform for d in leaf.devices()}
    return {jax.default_backend()}


def platform_of(params: Params) -> str:
    """The one platform holding the params ('cpu' only when all are on CPU)."""
    platforms = platforms_of(params)
    return "cpu" if platforms == {"cpu"} else sorted(platforms - {"cpu"})[0]


def row_keys(key, row_offset, row_s, step_s) -> jax.Array:
    """`fold_in(fold_in(key, row_offset + row), step)` per slot: the sampler's
    randomness rule, so a row draws the same tokens in whichever slot."""
    row_keys_s = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        key, row_offset + row_s
    )
    return jax.vmap(jax.random.fold_in)(row_keys_s, step_s)

"""The continuous batching engine: the rollout path of training and evaluation.

Every prompt is prefilled once through the learner's forward
(`decoder.hidden`, layers scanned; logits only at the last position), then
one jitted `while_loop` decodes every (prompt, sample) row through a fixed
number of decode slots: a slot whose row ended (EOS or max_new_tokens) takes
the next pending one, copying that prompt's prefilled keys/values into its
cache and drawing the row's first token from the prompt's prefill logits (the
n samples of a prompt share its prefill). The bookkeeping (which slot takes
which row, when) is `scheduler`. Slots are at different positions, so each
writes its own cache column, and attention reads the caches block by block
only up to the longest live row. The decode weights are packed once per
rollout (`sampling.prepare`), outside the loop.

`rollout` is the entry point (`generate` its convenience form); `lower`
gives the programs a rollout runs, for given shapes and shardings, so that
the planner compiles exactly what runs (`RolloutShape` is the one rule for
the padded prompt count and the slot count).

Axis legend for tensor-name suffixes (extends the one in `model/decoder.py`):
  b  prompt rows                t  prompt positions (left-padded width)
  r  response rows, r = b * n (prompt-major: row i*n + j is sample j of prompt i)
  n  generated-token positions (max_new_tokens)
  v  vocabulary                 c  kept candidates (top-k)
  s  decode slots (in `valid_rs`, cache positions)
  w  a slot cache's width (prompt + response columns)

Randomness. Row `r` at decode step `j` draws with the key
`fold_in(fold_in(key, row_offset + r), j)`: deterministic for a key,
independent across rows, and independent of how a rollout is split into
slots or sharded over devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding
from rlvr_jax.model import decoder
from rlvr_jax.rollout import decoding, paged_engine, prefill, sampling, scheduler
from rlvr_jax.rollout.sampling import (
    Params,
    Rollout,
    SamplerWeights,
    Samples,
    SamplingSettings,
)

# ------------------------------------------------------ continuous batching
ATTENTION_BLOCK = 128  # cache slots per attention block (see `continuous`)
REFILL_EVERY = scheduler.REFILL_EVERY


def attended_columns(prompt_width, longest, block: int):
    """Cache columns a decode step attends over: whole `block`-column blocks
    up to the longest live row's next column (`longest`: its tokens so far).
    Works on traced and numpy integers alike (the planner's replay).
    """
    return (prompt_width + longest + block - 1) // block * block


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


def _initial_state(config, settings, slots, width, rows, slot_sharding) -> _SlotState:
    """Empty slot caches of `width` columns and the rows' output buffers."""
    k, h, new = config.n_kv_heads, config.head_dim, settings.max_new_tokens
    dtype = jnp.dtype(settings.cache_dtype)

    def placed(x):
        if slot_sharding is None:
            return x
        return jax.lax.with_sharding_constraint(x, slot_sharding)

    layers = range(config.n_layers)
    return _SlotState(
        caches=decoding.Cache(
            k=tuple(placed(jnp.zeros((slots, k, h, width), dtype)) for _ in layers),
            v=tuple(placed(jnp.zeros((slots, k, width, h), dtype)) for _ in layers),
        ),
        valid_sw=placed(jnp.ones((slots, width), bool)),
        prompt_len_s=placed(jnp.ones((slots,), jnp.int32)),
        last_s=placed(jnp.zeros((slots,), jnp.int32)),
        tokens_rn=jnp.full((rows, new), settings.pad_id, jnp.int32),
        logprobs_rn=jnp.zeros((rows, new), jnp.float32),
        lengths_r=jnp.zeros((rows,), jnp.int32),
        ended_r=jnp.zeros((rows,), bool),
    )


def _record_slots(slots, state, tokens_s, logprobs_s, produced_s, settings):
    """Writes the `produced_s` slots' tokens at (row, step) of the buffers."""
    # Slots that produced nothing write out of bounds: dropped.
    row_s = jnp.where(produced_s, slots.row_s, state.tokens_rn.shape[0])
    step_s = slots.step_s
    eos_s = sampling.is_eos(tokens_s, settings.eos_ids)
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
    blocks = attended_columns(prompt_width, longest, block) // block
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
    tokens_s, logprobs_s = sampling.choose(
        logits_sv, sampling.row_keys(key, row_offset, slots.row_s, step_s), settings
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

    # ---- prefill: once per prompt; its n samples all start from these
    # keys/values and last-position logits.
    cache, logits_bv = prefill.prefill(
        config, weights, prompt_tokens_bt, prompt_mask_bt, settings, slot_sharding
    )
    store, _ = decoding.cache_from_prefill(cache, 0, 1, settings.cache_dtype)
    store = _split_positions(store, slot_sharding)
    prompt_len_b = prompt_mask_bt.sum(-1, dtype=jnp.int32)

    # ---- slot caches: the prompt's columns, then the response's, rounded up
    # to whole attention blocks (never-written columns are never attended).
    width = -(-(t + new) // block) * block
    state = _initial_state(config, settings, slots, width, r, slot_sharding)

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
        tokens_s, logprobs_s = sampling.choose(
            jnp.take(logits_bv, b_s, axis=0),
            sampling.row_keys(key, row_offset, slots_.row_s, slots_.step_s),
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


def attention_block(width: int, platform: str) -> int:
    """Cache slots per attention block of a `width`-column slot cache.

    `ATTENTION_BLOCK` (or the whole cache when narrower); on CPU the whole
    cache: XLA:CPU runs a loop over small blocks far slower than one pass
    over a host-memory cache.
    """
    return width if platform == "cpu" else min(ATTENTION_BLOCK, width)


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
        k=tuple(prefill.split_like_slots(x, 3, slot_sharding) for x in store.k),
        v=tuple(prefill.split_like_slots(x, 2, slot_sharding) for x in store.v),
    )


def continuous(
    config: decoder.ModelConfig,
    params: Params,
    prompt_tokens_bt: jax.Array,
    prompt_mask_bt: jax.Array,
    key: jax.Array,
    row_offset: int | jax.Array = 0,
    *,
    settings: SamplingSettings,
    slots: int,
    rows: int | jax.Array | None = None,
    refill_every: int = REFILL_EVERY,
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
    sampling.require(
        isinstance(slots, (int, np.integer)) and slots >= 1,
        "slots",
        f"must be a positive integer, got {slots!r}",
    )
    shards = prefill.shards_of(slot_sharding)
    sampling.require(
        slots % shards == 0,
        "slots",
        f"{slots} slots do not split over the {shards} devices of the mesh's "
        "batch axes; use a multiple of that",
    )
    sampling.require(
        isinstance(refill_every, (int, np.integer)) and refill_every >= 1,
        "refill_every",
        f"must be a positive integer, got {refill_every!r}",
    )
    b, t = np.shape(prompt_tokens_bt)
    if block is None:
        block = attention_block(
            t + settings.max_new_tokens, sampling.platform_of(params)
        )
    sampling.require(block >= 1, "block", f"must be >= 1, got {block!r}")
    return _continuous_jit(
        config,
        sampling.prepare(config, params),
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
    sampling.require(len(prompts) > 0, "prompts", "is empty")
    limit = config.max_seq_len - max_new_tokens
    for i, p in enumerate(prompts):
        sampling.require(len(p) > 0, "prompts", f"prompts[{i}] is empty")
        sampling.require(
            len(p) <= limit,
            "prompts",
            f"prompts[{i}] has {len(p)} tokens; with max_new_tokens="
            f"{max_new_tokens} the context max_seq_len={config.max_seq_len} "
            f"allows at most {limit}",
        )
        ids = np.asarray(p)
        sampling.require(
            np.issubdtype(ids.dtype, np.integer)
            and ids.min() >= 0
            and ids.max() < config.vocab_size,
            "prompts",
            f"prompts[{i}] holds ids outside [0, {config.vocab_size})",
        )


@dataclasses.dataclass(frozen=True)
class RolloutShape:
    """The static sizes of one rollout call (what its program compiles for).

    Attributes:
      prompts: prompt rows fed: the call's prompts, padded with copies of the
        last one to split over the mesh's batch axes.
      prompt_width: the left-padded prompt width (a bucket).
      slots: rows decoded at once (the KV cache's rows).
      paging: the paged KV cache's sizes (`paged_engine.Paging`); None: slot
        caches.
    """

    prompts: int
    prompt_width: int
    slots: int
    paging: paged_engine.Paging | None = None


def rollout_shape(
    prompts: int,
    prompt_width: int,
    settings: SamplingSettings,
    slots: int | None,
    divisor: int = 1,
    paging: paged_engine.Paging | None = None,
) -> RolloutShape:
    """The shape `rollout` runs for `prompts` prompts: the one rule for it.

    The prompt rows are rounded up to a multiple of `divisor` (the mesh's
    batch devices); `slots` (None: every row at once) is capped at the
    prompts × n rows, then rounded up to a multiple of `divisor`.
    """
    rows = prompts * settings.n
    slots = rows if slots is None else min(max(1, slots), rows)
    return RolloutShape(
        prompts=prompts + -prompts % divisor,
        prompt_width=prompt_width,
        slots=slots + -slots % divisor,
        paging=paging,
    )


def rollout(
    config: decoder.ModelConfig,
    params: Params,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    key: jax.Array,
    *,
    slots: int | None = None,
    buckets: Sequence[int] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    decode_sharding: jax.sharding.Sharding | None = None,
    prompt_rows: int | None = None,
    row_offset: int = 0,
    paging: paged_engine.Paging | None = None,
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
    the decode weights (see `prepare`). `prompt_rows` sizes the call as if
    that many prompts came (at least len(prompts); see `rollout_shape`), so
    that calls with fewer prompts (an evaluation's last chunk) run the same
    program. `row_offset` numbers the rows from there for their sampling
    keys (see the module docstring), so a prompt list sampled in several
    calls draws the tokens it draws in one.

    Returns:
      A `Rollout` with len(prompts) * n prompt-major rows, including the
      left-padded prompt tokens/mask [R, W] repeated per sample.
    """
    tokens_bt, mask_bt = sampling.pad_prompts(prompts, buckets, settings.pad_id)
    n = settings.n
    b = len(prompts)
    divisor = 1 if mesh is None else sharding.batch_divisor(mesh)
    shape = rollout_shape(
        max(b, prompt_rows or 0), tokens_bt.shape[1], settings, slots, divisor
    )
    pad = shape.prompts - b  # copies of the last prompt, never generated
    fed_t = np.concatenate([tokens_bt, np.repeat(tokens_bt[-1:], pad, 0)])
    fed_m = np.concatenate([mask_bt, np.repeat(mask_bt[-1:], pad, 0)])
    if mesh is None:
        placed = {"t": fed_t, "m": fed_m}
    else:
        placed = sharding.shard_batch(
            mesh,
            {"t": sharding.process_rows(fed_t), "m": sharding.process_rows(fed_m)},
        )
    slots = shape.slots
    weights = sampling.prepare(config, params, decode_sharding=decode_sharding)
    call = dict(
        settings=settings,
        slots=slots,
        rows=b * n,
        slot_sharding=None if mesh is None else sharding.batch_sharding(mesh),
    )
    args = (config, weights, placed["t"], placed["m"], key, row_offset)
    preemptions = 0
    if paging is None:
        out = continuous(*args, **call)
    else:
        out, preempted = paged_engine.continuous_paged(*args, paging=paging, **call)
        preemptions = int(sharding.local_value(preempted))
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
        preemptions=preemptions,
    )


def rollout_in_calls(
    config: decoder.ModelConfig,
    params: Params,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    key: jax.Array,
    *,
    per_call: int,
    decode_sharding: jax.sharding.Sharding | None = None,
    **rollout_kwargs,
) -> Rollout:
    """`rollout` of `prompts` in calls of `per_call` prompts, as one `Rollout`.

    Every call is sized for `per_call` prompts (the last one padded), so all
    run one program; the decode weights are prepared once; rows are numbered
    across calls (`row_offset`), so the tokens are those one call over every
    prompt would draw. `rollout_kwargs` go to each `rollout` (slots, buckets,
    mesh); give `buckets` a single width for one program.
    """
    weights = sampling.prepare(config, params, decode_sharding=decode_sharding)
    starts = range(0, len(prompts), per_call)
    parts = [
        rollout(
            config,
            weights,
            prompts[start : start + per_call],
            settings,
            key,
            prompt_rows=per_call,
            row_offset=start * settings.n,
            **rollout_kwargs,
        )
        for start in starts
    ]
    return Rollout(
        tokens=np.concatenate([p.tokens for p in parts]),
        logprobs=np.concatenate([p.logprobs for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts]),
        truncated=np.concatenate([p.truncated for p in parts]),
        prompt_index=np.concatenate(
            [p.prompt_index + start for p, start in zip(parts, starts, strict=True)]
        ),
        prompt_tokens=np.concatenate([p.prompt_tokens for p in parts]),
        prompt_mask=np.concatenate([p.prompt_mask for p in parts]),
        decode_steps=sum(p.decode_steps for p in parts),
        slots=parts[0].slots,
        preemptions=sum(p.preemptions for p in parts),
    )


def generate(
    config: decoder.ModelConfig,
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
    sampling.require(
        slots is None or slots >= 1, "slots", f"must be >= 1, got {slots!r}"
    )
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


# ------------------------------------------------------------------- programs
def _abstract(shape, dtype, sharding_):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding_)


def lower_rollout(
    config: decoder.ModelConfig,
    weights: SamplerWeights,
    shape: RolloutShape,
    settings: SamplingSettings,
    mesh: jax.sharding.Mesh,
) -> jax.stages.Lowered:
    """The program `rollout` runs for `shape` on `mesh`, lowered.

    `weights` are abstract (`sampling.abstract_weights`): ShapeDtypeStructs
    placed as `prepare` places them. The arguments are placed as `rollout`
    places its own: prompts and slots split over the mesh's batch axes.
    """
    rows = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    width = shape.prompt_width + settings.max_new_tokens
    key = jax.eval_shape(lambda: jax.random.key(0))
    scalar = _abstract((), jnp.int32, replicated)
    args = (
        config,
        weights,
        _abstract((shape.prompts, shape.prompt_width), jnp.int32, rows),
        _abstract((shape.prompts, shape.prompt_width), bool, rows),
        jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated),
        scalar,
        scalar,
    )
    platform = mesh.devices.flat[0].platform
    if shape.paging is not None:
        return paged_engine.lower(
            *args,
            settings=settings,
            slots=shape.slots,
            paging=shape.paging,
            platform=platform,
            slot_sharding=rows,
        )
    return _continuous_jit.lower(
        *args,
        settings=settings,
        slots=shape.slots,
        refill_every=REFILL_EVERY,
        block=attention_block(width, platform),
        slot_sharding=rows,
    )


def lower_decode_step(
    config: decoder.ModelConfig,
    decode_weights: decoding.Weights,
    shape: RolloutShape,
    settings: SamplingSettings,
    mesh: jax.sharding.Mesh,
    width: int | None = None,
) -> jax.stages.Lowered:
    """One iteration of the rollout's decode loop over `shape.slots` slots,
    lowered: the loop body, whose cost the planner counts per step.

    Attention runs over a cache of `width` columns (default: prompt width +
    max_new_tokens, every slot full length) in one block. The slot state is
    split over the mesh's batch axes and donated, as in the loop.
    """
    width = width or shape.prompt_width + settings.max_new_tokens
    rows = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    state = jax.eval_shape(
        lambda: _initial_state(config, settings, shape.slots, width, shape.slots, None)
    )
    state = jax.tree.map(lambda a: _abstract(a.shape, a.dtype, rows), state)
    slots = jax.eval_shape(lambda: scheduler.empty(shape.slots, shape.slots))
    slots = jax.tree.map(
        lambda a: _abstract(a.shape, a.dtype, rows if a.ndim else replicated), slots
    )
    key = jax.eval_shape(lambda: jax.random.key(0))
    fn = jax.jit(
        _slot_decode_step,
        static_argnames=("config", "settings", "prompt_width", "block"),
        donate_argnums=2,
    )
    return fn.lower(
        config,
        decode_weights,
        state,
        slots,
        jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated),
        _abstract((), jnp.int32, replicated),
        settings=settings,
        prompt_width=shape.prompt_width,
        block=width,
    )

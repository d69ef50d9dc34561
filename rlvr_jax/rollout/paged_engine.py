"""Continuous batching over a paged KV cache: rows in flight bounded by
their real tokens, not by slots of the widest response.

The slot engine (`engine.continuous`) gives each of S slots a cache row of
prompt + max_new_tokens columns, so on a chip's memory S is what the widest
response allows (256 for π1 on v5e-8) while real responses are about an
eighth of that wide. Here the keys and values live in a pool of pages
(`model.paged`): a row takes a page as it grows and returns its pages when
it ends, so S can be as large as the rows' real tokens allow, and with fewer
decode steps per rollout each (HBM-bound) step's weight read is shared by
more rows.

What is the same as `engine.continuous`: every prompt is prefilled once
through the learner's forward (`prefill.prefill`); a row's first token comes
from its prompt's prefill logits; the decode step is the model's own math
(`decoding.paged_step`); row r at step j draws with
`fold_in(fold_in(key, row_offset + r), j)` (`sampling.row_keys`), so tokens and
log-probs do not depend on the slot, the neighbours, the pool size or
preemption. `tests/test_paged.py` checks paged == slots.

What differs:
  * Prompts are stored compact (a token's column is its RoPE position) in
    the pool's first pages, shared read-only by the n samples of a prompt;
    a row's first own page starts as a copy of its prompt's partial last
    page (`pagebook`).
  * When the pool runs dry a live row is preempted (`pagebook.allocate`)
    and later restarts; it is fed the tokens it already drew (teacher
    forcing), so its keys/values are recomputed in shared decode steps and
    nothing is sampled twice.
  * With a mesh, each device of the batch axes runs its own book and pool
    over its own prompts' rows (a `vmap` over the devices whose axis is
    split over them): no page ever moves between devices.

Attention: `model.paged.attend` (pure JAX, blocks up to the longest live
row) off TPU; on TPU, for bf16 caches with 128-lane heads, the Pallas
paged-attention kernel (`model.paged.attend_pallas`), which reads each row's
pages up to its own length.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding
from rlvr_jax.model import paged
from rlvr_jax.rollout import decoding, pagebook, prefill, sampling, scheduler
from rlvr_jax.rollout.sampling import SamplerWeights, Samples, SamplingSettings

BLOCK_COLUMNS = 128  # columns per attention block of the pure-JAX path
ATTENTIONS = ("auto", "xla", "pallas")


@dataclasses.dataclass(frozen=True)
class Paging:
    """A paged KV cache's sizes (hashable: a jit static argument).

    Attributes:
      page: columns (tokens) per page, C.
      pages: response pages per device of the batch axes (the prompts'
        pages come on top: ceil(prompt width / C) per prompt).
      attention: "auto" (the Pallas kernel on TPU where it applies, else
        "xla"), "xla" (`model.paged.attend`) or "pallas".
      prefill_chunk: prompts per device prefilled at once (0: all); the
        prefill's transient memory is a chunk's.
    """

    page: int
    pages: int
    attention: str = "auto"
    prefill_chunk: int = 0

    def __post_init__(self):
        sampling.require(
            isinstance(self.page, (int, np.integer)) and self.page >= 1,
            "page",
            f"must be a positive integer, got {self.page!r}",
        )
        sampling.require(
            isinstance(self.pages, (int, np.integer)) and self.pages >= 1,
            "pages",
            f"must be a positive integer, got {self.pages!r}",
        )
        sampling.require(
            isinstance(self.prefill_chunk, (int, np.integer))
            and self.prefill_chunk >= 0,
            "prefill_chunk",
            f"must be an integer >= 0, got {self.prefill_chunk!r}",
        )
        sampling.require(
            self.attention in ATTENTIONS,
            "attention",
            f"expected one of {ATTENTIONS}, got {self.attention!r}",
        )


def pool_shape(paging: Paging, prompts: int, prompt_width: int) -> tuple[int, int]:
    """(prompt pages, all pages) of one device's pool for `prompts` prompts
    of `prompt_width` left-padded columns."""
    prompt_pages = prompts * -(-prompt_width // paging.page)
    return prompt_pages, prompt_pages + paging.pages


def table_width(paging: Paging, prompt_width: int, settings, per_block: int) -> int:
    """Q, logical pages per row: every column a row can write or read,
    rounded up to whole attention blocks of `per_block` pages."""
    columns = prompt_width + settings.max_new_tokens
    q = -(-columns // paging.page)
    return -(-q // per_block) * per_block


def pages_per_block(
    paging: Paging, prompt_width: int, max_new_tokens: int, platform: str
) -> int:
    """Pages per attention block: one block over a row's whole table on CPU
    (XLA:CPU runs a loop of small blocks far slower), else about
    `BLOCK_COLUMNS` columns."""
    if platform == "cpu":
        return -(-(prompt_width + max_new_tokens) // paging.page)
    return max(1, BLOCK_COLUMNS // paging.page)


def attention_kind(
    paging: Paging, config, settings, platform: str, manual: bool
) -> str:
    """The attention each device runs, "pallas" or "xla": the Pallas kernel
    on TPU for bf16 caches of 128-lane heads, and only where it runs per
    device (`manual`: not under a `vmap` over devices, i.e. one device, or
    decode weights whole on every device)."""
    choice = paging.attention
    if choice == "pallas" and not manual:
        raise ValueError(
            "attention: the Pallas kernel runs per device; with decode weights "
            "split over the batch axes use 'xla' (or 'auto')"
        )
    if choice == "auto":
        fits = paged.kernel_supports(config.head_dim, settings.cache_dtype)
        choice = "pallas" if platform == "tpu" and fits and manual else "xla"
    return choice


def runs_per_device(shards: int, slot_sharding, decode_weights) -> bool:
    """Whether each device runs its own program (`_over_devices`)."""
    return _per_device(shards, slot_sharding, _split_over_batch(decode_weights))


def _per_device(shards: int, slot_sharding, weights_split: bool) -> bool:
    """One device, or a mesh whose only split axes are the batch axes the
    rows go over, with the decode weights whole on every device: then each
    device can run its own program (a custom kernel needs that: the
    partitioner cannot split one, not even over a size-1 axis)."""
    if shards == 1:
        return True
    if not isinstance(slot_sharding, jax.sharding.NamedSharding) or weights_split:
        return False
    batch = set(jax.tree.leaves(slot_sharding.spec[0]))
    sizes = slot_sharding.mesh.shape
    return all(sizes[a] == 1 for a in sizes if a not in batch)


class _PagedState(NamedTuple):
    """One device's paged loop payload (s = slots, r = its rows)."""

    pages: decoding.Pages
    last_s: jax.Array
    tokens_rn: jax.Array
    logprobs_rn: jax.Array
    lengths_r: jax.Array  # tokens recorded so far (a restarted row's stay)
    ended_r: jax.Array


def _record(book, state, tokens_s, logprobs_s, produced_s, settings):
    """Records the `produced_s` slots' tokens; a restarted row rewrites the
    tokens it had (its count only grows)."""
    s = book.slots
    row_s = jnp.where(produced_s, s.row_s, state.tokens_rn.shape[0])
    eos_s = sampling.is_eos(tokens_s, settings.eos_ids)
    state = state._replace(
        last_s=jnp.where(produced_s, tokens_s, state.last_s),
        tokens_rn=state.tokens_rn.at[row_s, s.step_s].set(tokens_s, mode="drop"),
        logprobs_rn=state.logprobs_rn.at[row_s, s.step_s].set(logprobs_s, mode="drop"),
        lengths_r=state.lengths_r.at[row_s].max(s.step_s + 1, mode="drop"),
        ended_r=state.ended_r.at[row_s].set(eos_s, mode="drop"),
    )
    slots = scheduler.record(s, produced_s, eos_s, settings.max_new_tokens)
    return book._replace(slots=slots), state


def _forced(state, row_s, step_s, tokens_s, logprobs_s):
    """A restarted row's own earlier tokens where it has them (teacher
    forcing), the new choice elsewhere."""
    rows = state.tokens_rn.shape[0]
    safe_s = jnp.minimum(row_s, rows - 1)
    had_s = step_s < state.lengths_r[safe_s]
    return (
        jnp.where(had_s, state.tokens_rn[safe_s, step_s], tokens_s),
        jnp.where(had_s, state.logprobs_rn[safe_s, step_s], logprobs_s),
    )


def _device_rollout(
    config,
    decode_weights,
    pages: decoding.Pages,
    logits_bv,
    prompt_len_b,
    key,
    first_row,
    rows,
    *,
    settings,
    slots,
    paging,
    refill_every,
    per_block,
    table_q,
    attend,
):
    """One device's rows (its prompts' rows) through its own book and pool."""
    b = logits_bv.shape[0]
    n, new = settings.n, settings.max_new_tokens
    r = b * n
    c = paging.page
    prompt_pages = pages.k[0].shape[1] - paging.pages
    per_prompt = prompt_pages // b
    total = pages.k[0].shape[1]
    own = pagebook.own_pages(c, new)

    def prompt_of(row_s):
        return jnp.minimum(row_s // n, b - 1)

    def prompt_len_of(row_s):
        return prompt_len_b[prompt_of(row_s)]

    def table(book):
        """int32 [S, Q] pool pages: the prompt's full pages, then own ones."""
        q_q = jnp.arange(table_q)
        first_s = pagebook.first_own(book, c)
        prompt_sq = prompt_of(book.slots.row_s)[:, None] * per_prompt + q_q[None]
        own_index_sq = jnp.clip(q_q[None] - first_s[:, None], 0, own - 1)
        own_sq = prompt_pages + jnp.take_along_axis(book.own_so, own_index_sq, axis=1)
        table_sq = jnp.where(q_q[None] < first_s[:, None], prompt_sq, own_sq)
        return jnp.clip(table_sq, 0, total - 1)

    def start(book, new_s, state):
        s = book.slots
        tokens_s, logprobs_s = sampling.choose(
            jnp.take(logits_bv, prompt_of(s.row_s), axis=0),
            sampling.row_keys(key, first_row, s.row_s, s.step_s),
            settings,
        )
        tokens_s, logprobs_s = _forced(state, s.row_s, s.step_s, tokens_s, logprobs_s)
        return _record(book, state, tokens_s, logprobs_s, new_s, settings)

    def granted(book, granted_s, page_s, state):
        # A row's first own page starts as its prompt's partial last page.
        first_s = granted_s & (book.owned_s == 1)
        src_s = prompt_of(book.slots.row_s) * per_prompt + pagebook.first_own(book, c)
        src_s = jnp.clip(src_s, 0, prompt_pages - 1)
        dst_s = jnp.where(first_s, prompt_pages + page_s, total)

        def copy(pool_kpch):
            return pool_kpch.at[:, dst_s].set(pool_kpch[:, src_s], mode="drop")

        return state._replace(
            pages=decoding.Pages(
                k=tuple(copy(x) for x in state.pages.k),
                v=tuple(copy(x) for x in state.pages.v),
            )
        )

    def advance(book, state):
        s = book.slots
        column_s = jnp.where(s.live_s, pagebook.write_column(book), 0)
        table_sq = table(book)
        page_s = jnp.take_along_axis(table_sq, (column_s // c)[:, None], axis=1)[:, 0]
        write_s = jnp.where(s.live_s, page_s, total)  # idle slots write nothing
        longest = jnp.max(jnp.where(s.live_s, column_s + 1, 0))
        blocks = -(-longest // (per_block * c))
        logits_sv, pages_ = decoding.paged_step(
            config,
            decode_weights,
            state.pages,
            state.last_s,
            column_s,
            write_s,
            table_sq,
            attend=attend,
            pages_per_block=per_block,
            blocks=blocks,
        )
        tokens_s, logprobs_s = sampling.choose(
            logits_sv, sampling.row_keys(key, first_row, s.row_s, s.step_s), settings
        )
        tokens_s, logprobs_s = _forced(state, s.row_s, s.step_s, tokens_s, logprobs_s)
        state = state._replace(pages=pages_)
        return _record(book, state, tokens_s, logprobs_s, s.live_s, settings)

    state = _PagedState(
        pages=pages,
        last_s=jnp.zeros((slots,), jnp.int32),
        tokens_rn=jnp.full((r, new), settings.pad_id, jnp.int32),
        logprobs_rn=jnp.zeros((r, new), jnp.float32),
        lengths_r=jnp.zeros((r,), jnp.int32),
        ended_r=jnp.zeros((r,), bool),
    )
    book, state = pagebook.run(
        pagebook.empty(slots, r, paging.pages, own),
        state,
        rows=rows,
        page=c,
        refill_every=refill_every,
        prompt_len_of=prompt_len_of,
        start=start,
        advance=advance,
        granted=granted,
    )
    return (
        state.tokens_rn,
        state.logprobs_rn,
        state.lengths_r,
        state.ended_r,
        book.slots.decode_steps,
        book.preemptions,
    )


def _by_device(x, shards: int, slot_sharding):
    """[shards * m, ...] -> [shards, m, ...], the new axis split over the
    batch axes (as the rows already are)."""
    return _split_devices(x.reshape((shards, -1) + x.shape[1:]), slot_sharding)


def _split_devices(x, slot_sharding):
    """`x`'s leading (device) axis split over the batch axes."""
    if isinstance(slot_sharding, jax.sharding.NamedSharding):
        spec = jax.sharding.PartitionSpec(slot_sharding.spec[0])
        x = jax.lax.with_sharding_constraint(
            x, jax.sharding.NamedSharding(slot_sharding.mesh, spec)
        )
    return x


def _paged(
    config,
    weights: SamplerWeights,
    prompt_tokens_bt,
    prompt_mask_bt,
    key,
    row_offset,
    rows,
    settings,
    slots,
    paging,
    refill_every,
    platform,
    shards,
    slot_sharding,
    weights_split,
):
    b, t = prompt_tokens_bt.shape
    n = settings.n
    per_block = pages_per_block(paging, t, settings.max_new_tokens, platform)
    table_q = table_width(paging, t, settings, per_block)
    pages, logits_dbv = _prompt_pages(
        config,
        weights,
        prompt_tokens_bt,
        prompt_mask_bt,
        settings,
        paging,
        shards,
        slot_sharding,
    )
    prompt_len_b = prompt_mask_bt.astype(bool).sum(-1, dtype=jnp.int32)
    r_device = b // shards * n
    first_row_d = row_offset + jnp.arange(shards, dtype=jnp.int32) * r_device
    rows_d = jnp.clip(
        rows - jnp.arange(shards, dtype=jnp.int32) * r_device, 0, r_device
    )
    manual = _per_device(shards, slot_sharding, weights_split)
    kind = attention_kind(paging, config, settings, platform, manual)
    attend = paged.attend_pallas if kind == "pallas" else paged.attend

    def device(decode_weights, pages_, logits_, len_, first_, rows_):
        return _device_rollout(
            config,
            decode_weights,
            pages_,
            logits_,
            len_,
            key,
            first_,
            rows_,
            settings=settings,
            slots=slots // shards,
            paging=paging,
            refill_every=refill_every,
            per_block=per_block,
            table_q=table_q,
            attend=attend,
        )

    run = _over_devices(device, shards, slot_sharding, manual)
    tokens, logprobs, lengths, ended, steps, preemptions = run(
        weights.decode,
        pages,
        logits_dbv,
        _by_device(prompt_len_b, shards, slot_sharding),
        first_row_d,
        rows_d,
    )
    return Samples(
        tokens_rn=tokens.reshape(b * n, -1),
        logprobs_rn=logprobs.reshape(b * n, -1),
        lengths_r=lengths.reshape(-1),
        truncated_r=~ended.reshape(-1),
        steps=jnp.max(lengths),
        decode_steps=jnp.max(steps),
    ), jnp.sum(preemptions)


def _prompt_pages(
    config, weights, tokens_bt, mask_bt, settings, paging, shards, slot_sharding
):
    """Every device's prompts prefilled `paging.prefill_chunk` at a time
    (all at once for 0) into pages, and the free pages after them.

    Returns (`decoding.Pages` with [D, K, P, C, H] pools: device d's prompts
    in order, `per prompt` pages each, then `paging.pages` free ones; the
    prompts' last-position logits [D, B/D, V]). A chunk takes the same
    number of prompts from every device, so every device prefills at once
    and its pages stay where its rows decode; the prefill's activations and
    keys/values are a chunk's, not the whole batch's.
    """
    b, t = tokens_bt.shape
    local = b // shards
    chunk = _chunk(paging.prefill_chunk, local)
    calls = local // chunk
    per_prompt = -(-t // paging.page)
    dtype = jnp.dtype(settings.cache_dtype)

    def by_chunk(x):
        # [B, ...] -> [calls, D * chunk, ...]: call j holds prompts
        # d * local + j * chunk + i of every device d.
        x = x.reshape((shards, calls, chunk) + x.shape[1:])
        x = jnp.swapaxes(x, 0, 1).reshape((calls, shards * chunk) + x.shape[3:])
        return prefill.split_like_slots(x, 1, slot_sharding)

    def one(args):
        tokens, mask = args
        cache, logits_bv = prefill.prefill(
            config, weights, tokens, mask, settings, slot_sharding
        )
        prompt_len_b = mask.astype(bool).sum(-1, dtype=jnp.int32)

        def pages_of(kv_lbskh):
            out = []
            for i in range(kv_lbskh.shape[0]):
                kpch = paged.pages_from_prefill(
                    kv_lbskh[i].astype(dtype), prompt_len_b, per_prompt, paging.page
                )
                k_, _, c_, h_ = kpch.shape
                out.append(jnp.swapaxes(kpch.reshape(k_, shards, -1, c_, h_), 0, 1))
            return tuple(out)

        return (
            pages_of(cache.k_lbskh),
            pages_of(cache.v_lbskh),
            logits_bv.reshape(shards, chunk, -1),
        )

    if calls == 1:
        k, v, logits = jax.tree.map(
            lambda x: x[None], one((by_chunk(tokens_bt)[0], by_chunk(mask_bt)[0]))
        )
    else:
        k, v, logits = jax.lax.map(one, (by_chunk(tokens_bt), by_chunk(mask_bt)))

    def pool(calls_dkpch):
        # [calls, D, K, chunk pages, C, H] -> [D, K, prompt pages + free, C, H]
        x = jnp.moveaxis(calls_dkpch, 0, 2)
        d_, k_, _, _, c_, h_ = x.shape
        x = x.reshape(d_, k_, -1, c_, h_)
        free = jnp.zeros((d_, k_, paging.pages, c_, h_), x.dtype)
        return _split_devices(jnp.concatenate([x, free], axis=2), slot_sharding)

    logits_dbv = jnp.moveaxis(logits, 0, 1).reshape(shards, local, -1)
    return (
        decoding.Pages(k=tuple(pool(x) for x in k), v=tuple(pool(x) for x in v)),
        _split_devices(logits_dbv, slot_sharding),
    )


def _chunk(asked: int, local: int) -> int:
    """Prompts per device per prefill call: the largest divisor of `local`
    not above `asked` (0: all of them)."""
    if not asked or asked >= local:
        return local
    return max(c for c in range(1, asked + 1) if local % c == 0)


def _over_devices(device, shards: int, slot_sharding, manual: bool):
    """`device` (one device's rollout) run for each of `shards` devices, its
    arguments after the weights and its results with a leading device axis.

    One device: called directly. Several, with the decode weights whole on
    every device and no axis split but the batch axes: a `shard_map`, each
    device running its own program (what a custom kernel needs: the partitioner cannot
    split one). Otherwise (weights split over the batch axes, e.g. a 7B's
    fsdp-sharded copy): a `vmap` whose device axis the partitioner splits,
    gathering the weights layer by layer as the slot engine does.
    """

    def squeezed(weights, *args):
        out = device(weights, *jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    if shards == 1:
        return squeezed
    if manual:
        # Manual over every axis (the others have size 1): a kernel inside
        # may not meet an automatically partitioned one.
        rows = jax.sharding.PartitionSpec(slot_sharding.spec[0])
        return jax.shard_map(
            squeezed,
            mesh=slot_sharding.mesh,
            in_specs=(jax.sharding.PartitionSpec(),) + (rows,) * 5,
            out_specs=rows,
            check_vma=False,
        )
    return jax.vmap(device, in_axes=(None, 0, 0, 0, 0, 0))


_paged_jit = jax.jit(
    _paged,
    static_argnames=(
        "config",
        "settings",
        "slots",
        "paging",
        "refill_every",
        "platform",
        "shards",
        "slot_sharding",
        "weights_split",
    ),
)


def continuous_paged(
    config,
    params,
    prompt_tokens_bt: jax.Array,
    prompt_mask_bt: jax.Array,
    key: jax.Array,
    row_offset: int | jax.Array = 0,
    *,
    settings: SamplingSettings,
    slots: int,
    paging: Paging,
    rows: int | jax.Array | None = None,
    refill_every: int = scheduler.REFILL_EVERY,
    slot_sharding: jax.sharding.Sharding | None = None,
) -> tuple[Samples, jax.Array]:
    """`engine.continuous` over a paged KV cache.

    Args:
      config, params, prompt_tokens_bt, prompt_mask_bt, key, row_offset,
        settings, rows, refill_every, slot_sharding: as for
        `engine.continuous`; with `slot_sharding`, B must split over its
        devices (each runs its own prompts' rows).
      slots: rows decoded at once over all devices (a multiple of them).
      paging: page size, response pages per device, attention.

    Returns:
      (`Samples`, preemptions: int32 scalar, rows preempted in all).

    Raises:
      ValueError: naming the bad argument (slots or prompts not splitting
        over the devices, a pool smaller than one widest row, ...).
    """
    sampling.require(
        isinstance(slots, (int, np.integer)) and slots >= 1,
        "slots",
        f"must be a positive integer, got {slots!r}",
    )
    shards = prefill.shards_of(slot_sharding)
    b, t = np.shape(prompt_tokens_bt)
    sampling.require(
        slots % shards == 0 and b % shards == 0,
        "slots",
        f"{slots} slots and {b} prompts must both split over the {shards} "
        "devices of the mesh's batch axes",
    )
    own = pagebook.own_pages(paging.page, settings.max_new_tokens)
    sampling.require(
        paging.pages >= own,
        "pages",
        f"a pool of {paging.pages} pages of {paging.page} cannot hold one "
        f"widest row ({settings.max_new_tokens} tokens: {own} pages)",
    )
    weights = sampling.prepare(config, params)
    return _paged_jit(
        config,
        weights,
        prompt_tokens_bt,
        prompt_mask_bt,
        key,
        jnp.asarray(row_offset, jnp.int32),
        jnp.asarray(b * settings.n if rows is None else rows, jnp.int32),
        settings=settings,
        slots=int(slots),
        paging=paging,
        refill_every=int(refill_every),
        platform=sampling.platform_of(params),
        shards=shards,
        slot_sharding=slot_sharding,
        weights_split=_split_over_batch(weights.decode),
    )


def _split_over_batch(tree) -> bool:
    """Whether any array of `tree` is split over the mesh's batch axes."""
    for leaf in jax.tree.leaves(tree):
        placed = getattr(leaf, "sharding", None)
        if isinstance(placed, jax.sharding.NamedSharding):
            named = set(jax.tree.leaves(tuple(placed.spec)))
            if named & set(sharding.BATCH_AXES):
                return True
    return False


def lower(
    config,
    weights: SamplerWeights,
    *args,
    settings: SamplingSettings,
    slots: int,
    paging: Paging,
    platform: str,
    slot_sharding: jax.sharding.Sharding,
) -> jax.stages.Lowered:
    """The program `continuous_paged` runs, lowered for abstract `weights`
    and arguments (prompt tokens, mask, key, row offset, rows; placed as
    `engine.lower_rollout` places them)."""
    return _paged_jit.lower(
        config,
        weights,
        *args,
        settings=settings,
        slots=slots,
        paging=paging,
        refill_every=scheduler.REFILL_EVERY,
        platform=platform,
        shards=prefill.shards_of(slot_sharding),
        slot_sharding=slot_sharding,
        weights_split=_split_over_batch(weights.decode),
    )

"""A step at a response-length mix: its decode steps, their widths, its
packed learner rows.

The planner's programs are compiled once, at the widest shapes; what a step
at real lengths costs follows from how many times each runs and at what
width:

  decoding   the rollout's R rows are replayed through the sampler's own
             scheduler (`scheduler.replay`: its slots, refills every
             `engine.REFILL_EVERY` steps) with each row ending at its drawn
             length. That counts the decode steps, and for each the tokens of
             the longest live row, which sets the cache columns its
             attention reads (`engine.attended_columns`: whole blocks up to
             that row; on CPU, one block, the whole cache).
  line       one decode step's FLOPs and bytes are affine in those columns
             (the weights and the sampling once, the cache by its columns):
             the step compiled at two widths gives the line, and the sum
             over the replayed steps is (steps) × the line at their mean
             width.
  pages      a paged cache (`rollout.page_size`) is replayed through its own
             book instead (`pagebook.replay`: admission while pages are
             free, preemption when they run dry), one device's rows at a
             time (each device runs its own prompts' rows), the busiest
             device setting the step count. With the Pallas kernel a step
             reads each live row's own pages only: its cost is the line at
             the width whose S rows hold the live rows' columns
             (Σ live columns / S); the pure-JAX path reads blocks up to the
             longest live row, as the slot engine does.
  packing    the rollout's sequences (prompt + response) are packed by the
             learner's own packing (`packing.plan`, its width and micro-batch
             rules); a pass over the batch costs in proportion to its packed
             token slots (rows × width) over the widest batch's.

Everything here is numpy on the host (the replay is jitted on the CPU).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rlvr_jax.learner import packing
from rlvr_jax.rollout import engine, pagebook, paged_engine, scheduler


@dataclasses.dataclass(frozen=True)
class Line:
    """A decode step's (FLOPs, bytes) at two cache widths; between and
    beyond them, linear in the width (`at`)."""

    width0: float
    flops0: float
    bytes0: float
    width1: float
    flops1: float
    bytes1: float

    def at(self, width: float) -> tuple[float, float]:
        if self.width1 == self.width0:
            return self.flops0, self.bytes0
        t = (width - self.width0) / (self.width1 - self.width0)
        return (
            self.flops0 + t * (self.flops1 - self.flops0),
            self.bytes0 + t * (self.bytes1 - self.bytes0),
        )


@dataclasses.dataclass(frozen=True)
class Decoding:
    """A replayed rollout: `steps` decode steps over `slots` slots, attending
    over `mean_width` cache columns on average; `tokens` generated in all."""

    rows: int
    slots: int
    steps: int
    mean_width: float
    tokens: int
    preemptions: int = 0
    mean_live: float = 0.0

    @property
    def slot_efficiency(self) -> float:
        return self.tokens / max(self.slots * self.steps, 1)


def cache_width(prompt_width: int, new_tokens: int, platform: str) -> tuple[int, int]:
    """(attention block, slot cache width) as the engine sizes them."""
    width = prompt_width + new_tokens
    block = engine.attention_block(width, platform)
    return block, -(-width // block) * block


def decoding(
    lengths_r: np.ndarray,
    slots: int,
    prompt_width: int,
    new_tokens: int,
    platform: str,
    refill_every: int = engine.REFILL_EVERY,
) -> Decoding:
    """The decode steps of a rollout whose row r runs to lengths_r[r] tokens
    (each ≤ new_tokens), and the cache columns they attend over on average."""
    lengths_r = np.asarray(lengths_r, np.int32)
    out = scheduler.replay(lengths_r, slots, refill_every)
    block, width = cache_width(prompt_width, new_tokens, platform)
    steps = int(out.decode_steps)
    mean = _mean_width(out.longest_l, prompt_width, block, width, steps)
    return Decoding(
        rows=int(lengths_r.size),
        slots=slots,
        steps=steps,
        mean_width=mean,
        tokens=int(lengths_r.sum()),
    )


def _mean_width(longest_l, prompt_width: int, block: int, width, steps: int):
    """Mean cache columns attended over `steps` decode steps, from the steps
    counted by their longest live row (`longest_l`): whole `block`s up to it,
    or every step the whole `width` when one block spans it."""
    per_longest = np.asarray(longest_l, np.int64)
    if width is not None and block >= width:
        widths = np.full(per_longest.shape, width)
    else:
        longest = np.arange(per_longest.size)
        widths = engine.attended_columns(prompt_width, longest, block)
    return float((per_longest * widths).sum()) / max(steps, 1)


def paged_decoding(
    lengths_r: np.ndarray,
    slots: int,
    paging: paged_engine.Paging,
    prompt_width: int,
    new_tokens: int,
    platform: str,
    shards: int,
    kernel: bool,
    n: int = 1,
    refill_every: int = engine.REFILL_EVERY,
) -> Decoding:
    """`decoding` for a paged cache: each of the `shards` devices replays its
    own rows (whole groups of n, as the engine splits prompts) through its
    `slots / shards` slots and `paging.pages` pages; the device with the most
    decode steps is the rollout's. `mean_width` is in the slot line's terms
    (see the module docstring); every prompt is taken `prompt_width` long.
    """
    lengths_r = np.asarray(lengths_r, np.int32)
    per_device = lengths_r.reshape(shards, -1)
    local = slots // shards
    best = None
    for d in range(shards):
        out = pagebook.replay(
            per_device[d],
            prompt_width,
            slots=local,
            pages=paging.pages,
            page=paging.page,
            max_new_tokens=new_tokens,
            refill_every=refill_every,
        )
        if best is None or int(out.decode_steps) > int(best.decode_steps):
            best = out
    steps = int(best.decode_steps)
    if kernel:
        mean = float(np.asarray(best.kv_t, np.int64)[:steps].sum()) / max(
            steps * local, 1
        )
    else:
        per_block = paged_engine.pages_per_block(
            paging, prompt_width, new_tokens, platform
        )
        block = per_block * paging.page
        mean = _mean_width(best.longest_l, prompt_width, block, None, steps)
    live = np.asarray(best.live_t, np.int64)[:steps]
    return Decoding(
        rows=int(lengths_r.size),
        slots=slots,
        steps=steps,
        mean_width=mean,
        tokens=int(lengths_r.sum()),
        preemptions=int(best.preemptions),
        mean_live=float(live.mean()) * shards if steps else 0.0,
    )


@dataclasses.dataclass(frozen=True)
class RolloutCost:
    """A rollout program priced by parts.

    Attributes:
      flops, nbytes: the rollout program as compiled (its loops once): the
        prefill, one refill and one decode step.
      line: one decode step by cache width.
      slots, prompt_width, new_tokens, platform: what the replay needs.
      rows: the rollout's response rows.
    """

    flops: float
    nbytes: float
    line: Line
    rows: int
    slots: int
    prompt_width: int
    new_tokens: int
    platform: str
    paging: paged_engine.Paging | None = None
    shards: int = 1
    kernel: bool = False

    def replay(
        self,
        lengths_r: np.ndarray | None = None,
        prompt_tokens: int | None = None,
        buckets: tuple[int, ...] | None = None,
    ) -> Decoding:
        """The decoding at `lengths_r` (None: every row at new_tokens) with
        prompts of `prompt_tokens` (None: the compiled prompt width): a
        paged cache holds them compact, slot caches at their bucket (from
        `buckets`; at most the compiled width)."""
        if lengths_r is None:
            lengths_r = np.full(self.rows, self.new_tokens, np.int32)
        prompt = min(prompt_tokens or self.prompt_width, self.prompt_width)
        if self.paging is not None:
            return paged_decoding(
                lengths_r,
                self.slots,
                self.paging,
                prompt,
                self.new_tokens,
                self.platform,
                self.shards,
                self.kernel,
            )
        width = self.prompt_width
        if prompt_tokens and buckets:
            width = min([b for b in sorted(buckets) if b >= prompt] or [width])
        return decoding(
            lengths_r,
            self.slots,
            min(width, self.prompt_width),
            self.new_tokens,
            self.platform,
        )

    def at(self, d: Decoding) -> tuple[float, float]:
        """(FLOPs, bytes) of the rollout decoded as `d`: the program, plus
        the steps beyond its one at their mean width (affine: the sum of
        the steps' costs is their count × the cost at their mean width)."""
        step_flops, step_bytes = self.line.at(d.mean_width)
        more = max(d.steps - 1, 0)
        return self.flops + more * step_flops, self.nbytes + more * step_bytes


@dataclasses.dataclass(frozen=True)
class Packed:
    """A step's sequences packed as the learner packs them: `rows` rows of
    `width` in `micro_batches` micro-batches."""

    rows: int
    width: int
    micro_batches: int
    sequences: int
    tokens: int


def packed(
    total_lengths: np.ndarray, limit: int, max_tokens: int | None, divisor: int
) -> Packed:
    """`packing.pack`'s layout of sequences of `total_lengths` tokens
    (prompt + response): its width (≤ `limit`), rows and micro-batches."""
    total = np.asarray(total_lengths, np.int64)
    width = packing.width_for(int(total.max()), limit)
    micro_rows = None
    if max_tokens:
        micro_rows = packing.rows_per_micro_batch(width, max_tokens, divisor)
    layout = packing.plan(total, width, divisor, micro_rows)
    per_micro = layout.rows if micro_rows is None else min(layout.rows, micro_rows)
    return Packed(
        rows=layout.rows,
        width=width,
        micro_batches=layout.rows // per_micro,
        sequences=int(total.size),
        tokens=int(total.sum()),
    )


def learner_fraction(mix: Packed, rows: int, width: int) -> float:
    """The packed batch's token slots over the widest batch's (`rows` of
    `width`), at most 1. At one width a pass costs in proportion to its rows
    (each row is the same program's work); a narrower packed width is
    counted by its token slots, an upper bound (attention per token grows
    with the row's width)."""
    return min(1.0, mix.rows * mix.width / (rows * width))

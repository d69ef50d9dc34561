"""Continuous batching's bookkeeping: which decode slot serves which row, when.

A rollout is R response rows (prompt-major: row i*n + j is sample j of
prompt i), decoded by a fixed number S of slots. The loop (`run`) repeats

  1. refill: every free slot takes the next pending row, in row order
     (`assign`); the caller's `start` then sets those slots up (the prompt's
     cached keys/values, the row's first token from its prefill logits),
     again while rows end at their first token and rows are pending;
  2. up to `refill_every` decode steps (`advance`, one token for every live
     slot), stopping early once no slot is live;

until no row is pending and no slot is live. Everything is traced (one
`while_loop`, static shapes), and the model never appears here: `start` and
`advance` are callbacks, so `benchmarks/rollout.py` replays a response-length
distribution through this exact loop with a stub `advance` that ends row r at
a predetermined length.

Why refill only every few steps: a refill gathers the prompt cache into the
slots (about prompt width / cache width of a decode step's reads), while a
slot that idles k steps waiting for it costs k / (mean length) of the slots'
throughput; a few steps keep both small.

Slot efficiency, Σ lengths / (S × decode_steps), is the fraction of
(slot × step) cells that produce a token (a row's first token comes from the
prefill, so the figure can slightly exceed 1 when rows are very short).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

REFILL_EVERY = 8  # decode steps between refills (the samplers' default)


class Slots(NamedTuple):
    """Per-slot bookkeeping, axis s = slots.

    Attributes:
      row_s: int32 [S] row the slot serves (its last one once it is free);
        `rows` (one past the last row) before its first row.
      step_s: int32 [S] tokens the slot's row has so far (the next goes to
        this position).
      live_s: bool [S] the slot's row is still generating.
      next_row: int32 scalar, the first row no slot has taken yet.
      decode_steps: int32 scalar, decode steps (`advance` calls) so far.
    """

    row_s: jax.Array
    step_s: jax.Array
    live_s: jax.Array
    next_row: jax.Array
    decode_steps: jax.Array


def empty(slots: int, rows: int | jax.Array) -> Slots:
    """S free slots, no row taken yet."""
    return Slots(
        row_s=jnp.full((slots,), rows, jnp.int32),
        step_s=jnp.zeros((slots,), jnp.int32),
        live_s=jnp.zeros((slots,), bool),
        next_row=jnp.zeros((), jnp.int32),
        decode_steps=jnp.zeros((), jnp.int32),
    )


def assign(slots: Slots, rows: int | jax.Array) -> tuple[Slots, jax.Array]:
    """Free slots take the next pending rows, lowest slot first.

    Returns (slots, new_s): new_s marks the slots that took a row (their
    step is reset to 0; they are live from here).
    """
    free_s = ~slots.live_s
    row_s = slots.next_row + jnp.cumsum(free_s, dtype=jnp.int32) - 1
    new_s = free_s & (row_s < rows)
    return (
        slots._replace(
            row_s=jnp.where(new_s, row_s, slots.row_s),
            step_s=jnp.where(new_s, 0, slots.step_s),
            live_s=slots.live_s | new_s,
            next_row=slots.next_row + jnp.sum(new_s, dtype=jnp.int32),
        ),
        new_s,
    )


def record(
    slots: Slots, produced_s: jax.Array, ended_s: jax.Array, max_tokens: int
) -> Slots:
    """Counts one token for the slots in `produced_s`; a slot's row ends when
    `ended_s` (e.g. it drew an EOS) or when it has `max_tokens` tokens."""
    step_s = slots.step_s + produced_s.astype(jnp.int32)
    finished_s = produced_s & (ended_s | (step_s >= max_tokens))
    return slots._replace(step_s=step_s, live_s=slots.live_s & ~finished_s)


Start = Callable[[Slots, jax.Array, Any], tuple[Slots, Any]]
Advance = Callable[[Slots, Any], tuple[Slots, Any]]


def run(
    slots: Slots,
    payload: Any,
    *,
    rows: int | jax.Array,
    refill_every: int,
    start: Start,
    advance: Advance,
) -> tuple[Slots, Any]:
    """Refills and decodes until every one of `rows` rows has ended.

    Args:
      slots: `empty(S, rows)`.
      payload: the caller's loop state (caches, output buffers, ...).
      rows: rows to generate (traced or static).
      refill_every: decode steps between refills (static, >= 1).
      start: (slots, new_s, payload) -> (slots, payload): sets up the rows
        just assigned to the `new_s` slots, e.g. records their first token
        (via `record`, which may end them at once).
      advance: (slots, payload) -> (slots, payload): one decode step; must
        `record` one token for every live slot.

    Returns:
      (slots, payload) after the last row ended; `slots.decode_steps` counts
      the `advance` calls.
    """
    if refill_every < 1:
        raise ValueError(f"refill_every: must be >= 1, got {refill_every!r}")

    def pending(slots):
        return jnp.any(slots.live_s) | (slots.next_row < rows)

    def decode(carry):
        k, slots, payload = carry
        slots, payload = advance(slots, payload)
        return k + 1, slots._replace(decode_steps=slots.decode_steps + 1), payload

    def refill(carry):
        slots, payload = carry
        slots, new_s = assign(slots, rows)
        return start(slots, new_s, payload)

    def refill_then_decode(carry):
        # Refilled until no slot is free or no row is pending: a row may end
        # at its first token (drawn in `start`), freeing its slot at once.
        slots, payload = jax.lax.while_loop(
            lambda c: jnp.any(~c[0].live_s) & (c[0].next_row < rows), refill, carry
        )
        _, slots, payload = jax.lax.while_loop(
            lambda c: (c[0] < refill_every) & jnp.any(c[1].live_s),
            decode,
            (jnp.zeros((), jnp.int32), slots, payload),
        )
        return slots, payload

    return jax.lax.while_loop(
        lambda c: pending(c[0]), refill_then_decode, (slots, payload)
    )


class Replay(NamedTuple):
    """What `replay` observed (r = rows, l = a live row's tokens so far).

    Attributes:
      tokens_r: int32 [R] tokens each row produced.
      started_r: int32 [R] decode steps done when the row took its slot.
      decode_steps: int32 scalar, `advance` calls.
      longest_l: int32 [> L] (L: the longest length; a power of two, so
        that replays share compiles) decode steps by the tokens the longest
        live row had when the step began: what bounds the cache columns
        that step attends over (`engine.attended_columns`).
    """

    tokens_r: jax.Array
    started_r: jax.Array
    decode_steps: jax.Array
    longest_l: jax.Array


def replay(lengths_r, slots: int, refill_every: int) -> Replay:
    """Drives `run` with a stub step: row r ends after lengths_r[r] tokens.

    The scheduling is the sampler's own (same `run`, `assign`, `record`),
    without a model, so a response-length distribution can be replayed to
    measure slot efficiency (`benchmarks/rollout.py`) and to count the
    decode steps of a rollout and the cache each reads (the planner's
    `planning.mix`). `lengths_r` must be concrete (its longest sizes
    `longest_l`).
    """
    longest = int(np.max(np.asarray(lengths_r))) if np.size(lengths_r) else 0
    size = 1 << longest.bit_length()  # > longest
    return _replay(jnp.asarray(lengths_r, jnp.int32), slots, refill_every, size)


@functools.partial(jax.jit, static_argnames=("slots", "refill_every", "size"))
def _replay(lengths_r: jax.Array, slots: int, refill_every: int, size: int):
    rows = lengths_r.shape[0]

    def produce(slots_, produced_s, payload):
        tokens_r, started_r, clock, longest_l = payload
        row_s = jnp.where(produced_s, slots_.row_s, rows)  # others dropped
        tokens_r = tokens_r.at[row_s].add(1, mode="drop")
        length_s = lengths_r[jnp.minimum(slots_.row_s, rows - 1)]
        ended_s = slots_.step_s + 1 >= length_s
        slots_ = record(slots_, produced_s, ended_s, jnp.iinfo(jnp.int32).max)
        return slots_, (tokens_r, started_r, clock, longest_l)

    def start(slots_, new_s, payload):
        tokens_r, started_r, clock, longest_l = payload
        row_s = jnp.where(new_s, slots_.row_s, rows)
        started_r = started_r.at[row_s].set(clock, mode="drop")
        return produce(slots_, new_s, (tokens_r, started_r, clock, longest_l))

    def advance(slots_, payload):
        tokens_r, started_r, clock, longest_l = payload
        # As the engine's decode step measures it (`engine._slot_decode_step`).
        live = jnp.max(jnp.where(slots_.live_s, slots_.step_s, 0))
        longest_l = longest_l.at[live].add(1, mode="drop")
        return produce(
            slots_, slots_.live_s, (tokens_r, started_r, clock + 1, longest_l)
        )

    payload = (
        jnp.zeros((rows,), jnp.int32),
        jnp.full((rows,), -1, jnp.int32),
        jnp.zeros((), jnp.int32),
        jnp.zeros((size,), jnp.int32),
    )
    done, (tokens_r, started_r, _, longest_l) = run(
        empty(slots, rows),
        payload,
        rows=rows,
        refill_every=refill_every,
        start=start,
        advance=advance,
    )
    return Replay(tokens_r, started_r, done.decode_steps, longest_l)

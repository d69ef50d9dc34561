"""The paged KV cache's bookkeeping: which slot serves which row, and which
pool pages each row holds.

As `scheduler` does for slot caches, and with its `Slots` inside, a `Book`
runs a rollout of R rows through S decode slots; here the slots' keys and
values live in a pool of P pages of C columns each (`model.paged`), so the
number of rows in flight is bounded by the pool, not by S rows of the
widest response. The loop (`run`) repeats

  1. admit: free slots take waiting rows (preempted ones first, lowest row
     first), then the next rows in order, while the pool has a page for
     each of them beyond the pages the live rows need next (`admit`);
     the caller's `start` sets them up (the first token comes from the
     prompt's prefill logits);
  2. up to `refill_every` decode steps, each preceded by `allocate`: every
     live row whose next column opens a new page gets one; when the pool
     runs dry, the most recently admitted live rows are preempted (their
     pages freed, the row queued again) until the rest fit, so a step
     never fails for memory. The oldest live row is never preempted while
     another is live, so every row finishes once the pool holds one
     widest row (`empty` checks that).

A row's pages: its prompt's full pages are shared, read-only, by the n
samples of the prompt (they live in the pool's first pages, outside the
book); its own pages start at logical page `prompt_len // C`, the page
its first response column falls in (the caller copies the prompt's partial
last page there). `own_sq` lists them; a row ending (EOS or
max_new_tokens) or preempted returns them to `free_p`.

A preempted row restarts from its first token when it is admitted again;
the caller feeds it the tokens it already drew (teacher-forced, nothing is
sampled twice), which recomputes its keys and values in the shared decode
steps. Everything is traced and model-free (`start`, `advance` and
`granted` are callbacks), so the planner replays a length mix through this
exact loop (`replay`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.rollout import scheduler


class Book(NamedTuple):
    """Slots and pages, axis s = slots, p = pool pages, o = a row's own pages.

    Attributes:
      slots: the slots (`scheduler.Slots`; `next_row` counts rows taken for
        the first time).
      waiting_r: bool [R] rows preempted and not yet admitted again.
      since_s: int32 [S] the admission count when the slot took its row
        (the latest admitted is preempted first).
      admitted: int32 scalar, admissions so far.
      prompt_len_s: int32 [S] the slot's row's prompt tokens.
      own_so: int32 [S, O] the row's own pages (pool-relative; P: none).
      owned_s: int32 [S] how many of `own_so` the row holds.
      free_p: bool [P] pages no row holds.
      preemptions: int32 scalar, rows preempted so far.
      page: int, columns per page (static, aux data).
    """

    slots: scheduler.Slots
    waiting_r: jax.Array
    since_s: jax.Array
    admitted: jax.Array
    prompt_len_s: jax.Array
    own_so: jax.Array
    owned_s: jax.Array
    free_p: jax.Array
    preemptions: jax.Array


def own_pages(page: int, max_new_tokens: int) -> int:
    """Most own pages a row can hold: its response columns (max_new - 1 of
    them are written; the last token is never fed) from anywhere in a page."""
    return max(1, (page - 1 + max_new_tokens - 2) // page + 1)


def empty(slots: int, rows: int, pages: int, own: int) -> Book:
    """S free slots, P free pages, no row taken yet (`rows`: the R rows'
    buffer size; `own`: `own_pages`)."""
    if pages < own:
        raise ValueError(
            f"pages: a pool of {pages} pages cannot hold one widest row "
            f"({own} pages); give the pool at least that many"
        )
    return Book(
        slots=scheduler.empty(slots, rows),
        waiting_r=jnp.zeros((rows,), bool),
        since_s=jnp.zeros((slots,), jnp.int32),
        admitted=jnp.zeros((), jnp.int32),
        prompt_len_s=jnp.zeros((slots,), jnp.int32),
        own_so=jnp.full((slots, own), pages, jnp.int32),
        owned_s=jnp.zeros((slots,), jnp.int32),
        free_p=jnp.ones((pages,), bool),
        preemptions=jnp.zeros((), jnp.int32),
    )


def write_column(book: Book) -> jax.Array:
    """int32 [S] the logical column each slot's next decode step writes: a
    row with j tokens feeds its token j - 1 at column prompt_len + j - 1."""
    return book.prompt_len_s + book.slots.step_s - 1


def first_own(book: Book, page: int) -> jax.Array:
    """int32 [S] the logical page of each slot's first own page."""
    return book.prompt_len_s // page


def needs(book: Book, page: int) -> jax.Array:
    """bool [S] live slots whose next column opens a page they do not hold."""
    own_index_s = write_column(book) // page - first_own(book, page)
    return book.slots.live_s & (own_index_s >= book.owned_s)


def _pending_rows(book: Book, rows) -> jax.Array:
    return jnp.any(book.waiting_r) | (book.slots.next_row < rows)


def admit(
    book: Book, rows, prompt_len_of: Callable[[jax.Array], jax.Array], page: int
) -> tuple[Book, jax.Array]:
    """Free slots take rows: waiting ones first (lowest row first), then the
    next new rows, at most one per page the pool can spare.

    Returns (book, new_s): new_s marks the slots that took a row (their step
    is 0 and they are live).
    """
    s = book.slots
    r = book.waiting_r.shape[0]
    spare = jnp.sum(book.free_p, dtype=jnp.int32) - jnp.sum(
        needs(book, page), dtype=jnp.int32
    )
    free_s = ~s.live_s
    rank_s = jnp.cumsum(free_s, dtype=jnp.int32) - 1  # among free slots
    waiting = jnp.sum(book.waiting_r, dtype=jnp.int32)
    # The k-th free slot takes the k-th waiting row, then new rows in order.
    waiting_ids = jnp.nonzero(book.waiting_r, size=r, fill_value=r)[0]
    from_waiting_s = rank_s < waiting
    row_s = jnp.where(
        from_waiting_s,
        waiting_ids[jnp.clip(rank_s, 0, r - 1)],
        s.next_row + rank_s - waiting,
    )
    new_s = (
        free_s & (rank_s < jnp.maximum(spare, 0)) & (from_waiting_s | (row_s < rows))
    )
    taken_new = jnp.sum(new_s & ~from_waiting_s, dtype=jnp.int32)
    waiting_r = book.waiting_r.at[jnp.where(new_s & from_waiting_s, row_s, r)].set(
        False, mode="drop"
    )
    since_s = book.admitted + jnp.cumsum(new_s, dtype=jnp.int32)
    slots = s._replace(
        row_s=jnp.where(new_s, row_s, s.row_s),
        step_s=jnp.where(new_s, 0, s.step_s),
        live_s=s.live_s | new_s,
        next_row=s.next_row + taken_new,
    )
    book = book._replace(
        slots=slots,
        waiting_r=waiting_r,
        since_s=jnp.where(new_s, since_s, book.since_s),
        admitted=book.admitted + jnp.sum(new_s, dtype=jnp.int32),
        prompt_len_s=jnp.where(new_s, prompt_len_of(row_s), book.prompt_len_s),
    )
    return book, new_s


def release(book: Book, gone_s: jax.Array) -> Book:
    """The `gone_s` slots' pages go back to the pool."""
    p = book.free_p.shape[0]
    held_so = gone_s[:, None] & (
        jnp.arange(book.own_so.shape[1])[None] < book.owned_s[:, None]
    )
    free_p = book.free_p.at[jnp.where(held_so, book.own_so, p)].set(True, mode="drop")
    return book._replace(
        free_p=free_p,
        own_so=jnp.where(gone_s[:, None], p, book.own_so),
        owned_s=jnp.where(gone_s, 0, book.owned_s),
    )


def _preempt_latest(book: Book) -> Book:
    """The most recently admitted live row gives its slot and pages back and
    waits to be admitted again."""
    s = book.slots
    since_s = jnp.where(s.live_s, book.since_s, -1)
    victim = jnp.argmax(since_s)
    gone_s = jnp.arange(s.live_s.shape[0]) == victim
    book = release(book, gone_s)
    return book._replace(
        slots=s._replace(live_s=s.live_s & ~gone_s),
        waiting_r=book.waiting_r.at[s.row_s[victim]].set(True, mode="drop"),
        preemptions=book.preemptions + 1,
    )


def allocate(book: Book, page: int) -> tuple[Book, jax.Array, jax.Array]:
    """Gives every live row whose next column opens a page a free page,
    preempting the latest admitted rows first while the pool is short.

    Returns (book, granted_s, page_s): the slots given a page and its
    pool-relative index (P elsewhere).
    """

    def short(book):
        need = jnp.sum(needs(book, page), dtype=jnp.int32)
        return need > jnp.sum(book.free_p, dtype=jnp.int32)

    book = jax.lax.while_loop(short, _preempt_latest, book)
    granted_s = needs(book, page)
    p = book.free_p.shape[0]
    s = granted_s.shape[0]
    free_ids = jnp.nonzero(book.free_p, size=min(s, p), fill_value=p)[0]
    rank_s = jnp.cumsum(granted_s, dtype=jnp.int32) - 1
    page_s = jnp.where(
        granted_s, free_ids[jnp.clip(rank_s, 0, free_ids.shape[0] - 1)], p
    )
    slot_index_s = jnp.where(granted_s, book.owned_s, book.own_so.shape[1])
    own_so = book.own_so.at[jnp.arange(s), slot_index_s].set(page_s, mode="drop")
    book = book._replace(
        own_so=own_so,
        owned_s=book.owned_s + granted_s.astype(jnp.int32),
        free_p=book.free_p.at[page_s].set(False, mode="drop"),
    )
    return book, granted_s, page_s


Start = Callable[[Book, jax.Array, Any], tuple[Book, Any]]
Advance = Callable[[Book, Any], tuple[Book, Any]]
Granted = Callable[[Book, jax.Array, jax.Array, Any], Any]


def run(
    book: Book,
    payload: Any,
    *,
    rows,
    page: int,
    refill_every: int,
    prompt_len_of: Callable[[jax.Array], jax.Array],
    start: Start,
    advance: Advance,
    granted: Granted,
) -> tuple[Book, Any]:
    """Admits, allocates and decodes until every one of `rows` rows ended.

    Args:
      book: `empty(S, R, P, own_pages(page, N))`.
      payload: the caller's loop state.
      rows: rows to generate (traced or static; the rest are padding).
      page: columns per page.
      refill_every: decode steps between admissions (static, >= 1).
      prompt_len_of: int32 [S] rows -> their prompt lengths.
      start: (book, new_s, payload) -> (book, payload): sets up the rows just
        admitted and records their first token (`scheduler.record` on
        `book.slots`).
      advance: (book, payload) -> (book, payload): one decode step; records
        one token for every live slot.
      granted: (book, granted_s, page_s, payload) -> payload: the pages just
        given (e.g. copy the prompt's partial page into a row's first one).

    Returns:
      (book, payload) after the last row ended.
    """
    if refill_every < 1:
        raise ValueError(f"refill_every: must be >= 1, got {refill_every!r}")

    def ended(before, book):
        return release(book, before & ~book.slots.live_s)

    def admit_once(carry):
        book, payload = carry
        book, new_s = admit(book, rows, prompt_len_of, page)
        before = book.slots.live_s
        book, payload = start(book, new_s, payload)
        return ended(before, book), payload

    def can_admit(carry):
        book = carry[0]
        spare = jnp.sum(book.free_p, dtype=jnp.int32) - jnp.sum(
            needs(book, page), dtype=jnp.int32
        )
        return jnp.any(~book.slots.live_s) & _pending_rows(book, rows) & (spare > 0)

    def decode(carry):
        k, book, payload = carry
        book, granted_s, page_s = allocate(book, page)
        payload = granted(book, granted_s, page_s, payload)
        before = book.slots.live_s
        book, payload = advance(book, payload)
        book = ended(before, book)
        s = book.slots
        book = book._replace(slots=s._replace(decode_steps=s.decode_steps + 1))
        return k + 1, book, payload

    def admit_then_decode(carry):
        book, payload = jax.lax.while_loop(can_admit, admit_once, carry)
        _, book, payload = jax.lax.while_loop(
            lambda c: (c[0] < refill_every) & jnp.any(c[1].slots.live_s),
            decode,
            (jnp.zeros((), jnp.int32), book, payload),
        )
        return book, payload

    def pending(carry):
        book = carry[0]
        return jnp.any(book.slots.live_s) | _pending_rows(book, rows)

    return jax.lax.while_loop(pending, admit_then_decode, (book, payload))


class Replay(NamedTuple):
    """What `replay` observed.

    Attributes:
      tokens_r: int32 [R] tokens each row produced (recomputed ones again).
      decode_steps: int32 scalar.
      preemptions: int32 scalar.
      live_t: int32 [decode_steps bound] live rows at each decode step.
      held_t: int32 [same] pages held at each decode step.
      kv_t: int32 [same] the live rows' attended columns at each decode
        step, each row's rounded up to whole pages (what a kernel reading
        each row's own pages reads).
      longest_l: int32 [> longest] decode steps by the tokens of the longest
        live row (as `scheduler.Replay`).
    """

    tokens_r: jax.Array
    decode_steps: jax.Array
    preemptions: jax.Array
    live_t: jax.Array
    held_t: jax.Array
    kv_t: jax.Array
    longest_l: jax.Array


def replay(
    lengths_r,
    prompt_len: int,
    *,
    slots: int,
    pages: int,
    page: int,
    max_new_tokens: int,
    refill_every: int,
) -> Replay:
    """Drives `run` without a model: row r ends after lengths_r[r] tokens.

    The admission, allocation and preemption are the paged sampler's own,
    so the planner counts the decode steps, rows in flight and pages held
    of a rollout at a length mix (`planning.mix`). Every row's prompt has
    `prompt_len` tokens (what sets its first page's fill).
    """
    lengths = np.asarray(lengths_r, np.int64)
    longest = int(lengths.max()) if lengths.size else 0
    size = 1 << longest.bit_length()
    # A bound on the decode steps, for the per-step traces (rows run at least
    # one at a time; preemption at most doubles a row's steps in practice).
    bound = 1 << int(2 * lengths.sum() + 1).bit_length()
    return _replay(
        jnp.asarray(lengths, jnp.int32),
        prompt_len,
        slots=slots,
        pages=pages,
        page=page,
        own=own_pages(page, max_new_tokens),
        refill_every=refill_every,
        size=size,
        bound=min(bound, 1 << 22),
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "prompt_len",
        "slots",
        "pages",
        "page",
        "own",
        "refill_every",
        "size",
        "bound",
    ),
)
def _replay(
    lengths_r, prompt_len, *, slots, pages, page, own, refill_every, size, bound
):
    rows = lengths_r.shape[0]

    def produce(book, produced_s, payload):
        tokens_r, live_t, held_t, kv_t, longest_l = payload
        s = book.slots
        row_s = jnp.where(produced_s, s.row_s, rows)
        tokens_r = tokens_r.at[row_s].add(1, mode="drop")
        ended_s = s.step_s + 1 >= lengths_r[jnp.minimum(s.row_s, rows - 1)]
        s = scheduler.record(s, produced_s, ended_s, jnp.iinfo(jnp.int32).max)
        return book._replace(slots=s), (tokens_r, live_t, held_t, kv_t, longest_l)

    def start(book, new_s, payload):
        return produce(book, new_s, payload)

    def advance(book, payload):
        tokens_r, live_t, held_t, kv_t, longest_l = payload
        s = book.slots
        t = s.decode_steps
        live_t = live_t.at[t].set(jnp.sum(s.live_s, dtype=jnp.int32), mode="drop")
        held = pages - jnp.sum(book.free_p, dtype=jnp.int32)
        held_t = held_t.at[t].set(held, mode="drop")
        # A row with j tokens attends prompt_len + j columns at this step.
        kv_s = -(-(book.prompt_len_s + s.step_s) // page) * page
        kv_t = kv_t.at[t].set(jnp.sum(jnp.where(s.live_s, kv_s, 0)), mode="drop")
        longest = jnp.max(jnp.where(s.live_s, s.step_s, 0))
        longest_l = longest_l.at[longest].add(1, mode="drop")
        return produce(book, s.live_s, (tokens_r, live_t, held_t, kv_t, longest_l))

    payload = (
        jnp.zeros((rows,), jnp.int32),
        jnp.zeros((bound,), jnp.int32),
        jnp.zeros((bound,), jnp.int32),
        jnp.zeros((bound,), jnp.int32),
        jnp.zeros((size,), jnp.int32),
    )
    book, (tokens_r, live_t, held_t, kv_t, longest_l) = run(
        empty(slots, rows, pages, own),
        payload,
        rows=rows,
        page=page,
        refill_every=refill_every,
        prompt_len_of=lambda row_s: jnp.full(row_s.shape, prompt_len, jnp.int32),
        start=start,
        advance=advance,
        granted=lambda book, granted_s, page_s, payload: payload,
    )
    return Replay(
        tokens_r,
        book.slots.decode_steps,
        book.preemptions,
        live_t,
        held_t,
        kv_t,
        longest_l,
    )

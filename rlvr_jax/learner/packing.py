"""Packing: the learner's batch of whole sequences laid side by side in rows.

A GRPO step trains on prompt + response sequences whose lengths are long-
tailed (median a few hundred tokens, a few thousand at the tail). Padding every
sequence to the longest one computes mostly padding; instead the sequences are
packed into rows of one fixed width W by first-fit decreasing on length:

    row 0: [seq 3 ········][seq 0 ·····][seq 5 ···]  .  .
    row 1: [seq 1 ·············][seq 4 ·····]  .  .  .  .

Per-token segment ids (i + 1 for sequence i, 0 for padding) keep attention
within a sequence (rlvr_jax/model/decoder.py) and per-segment positions restart RoPE,
so each sequence's log-probs are those of its own unpacked row.

Everything here is pure numpy on the host and deterministic in its inputs
(ties broken by sequence index), so every process of a multi-host run, holding
the same gathered rollout, computes the same plan and feeds its own rows.

Static shapes: W is a power of two ≥ the longest sequence (capped at `limit`);
the row count is a whole number of micro-batches (or one smaller micro-batch
when a step needs less than one), and that number, the rows of a lone
micro-batch and the head-slot count K are rounded up to 3 significant bits
(at most 12.5% extra), so a run compiles a handful of shapes, not one per
step. The micro-batch (`rows_per_micro_batch`: a per-device token budget over
W, times the devices) is the row granularity of a step that needs several, so
a budget of one or two rows per device keeps that padding small.

The layout (arrays for `step.train_step`; alignment as in `logprobs`' docstring:
column c scores tokens[c] from the hidden state at c − 1):

    tokens       int32 [R, W]  packed prompt + response tokens (0 in padding)
    mask         bool  [R, W]  real tokens (segment_ids != 0)
    segment_ids  int32 [R, W]  i + 1 for sequence i's tokens, 0 for padding
    positions    int32 [R, W]  position within the sequence (RoPE)
    loss_mask    bool  [R, W]  response tokens
    advantages   f32   [R, W]  Â of the token's sequence (0 elsewhere)
    loss_weight  f32   [R, W]  the token's weight in the loss aggregation
    head_cols    int32 [R, K]  columns c − 1 of the row's response tokens c,
                               padded with W (no column): the only positions
                               where the LM head runs
    old_logp     f32   [R, W]  the sampler's log-probs, when asked for

`loss_weight` makes every aggregation mode one weighted sum Σ w·x over the
whole mini-batch (its own normalisation, whatever the micro-batch split):

    token-mean            w = 1 / N          N response tokens in the batch
    seq-mean-token-mean   w = 1 / (S · L_i)  L_i tokens of sequence i
    seq-mean-token-sum    w = 1 / S          S sequences with L_i > 0
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where each sequence goes: row[i], start column offset[i]; R rows of W."""

    row: np.ndarray  # int [N]
    offset: np.ndarray  # int [N]
    rows: int  # R, a whole number of micro-batches (bucketed)
    width: int  # W


def bucket(n: int, minimum: int = 1) -> int:
    """n rounded up to 3 significant bits (8, 9, ..., 15, 16, 18, ..., 30, 32,
    36, ...): at most 12.5% larger, and few distinct values."""
    n = max(n, minimum)
    shift = max(0, n.bit_length() - 4)
    return -(-n >> shift) << shift


def power_of_two(n: int, minimum: int) -> int:
    """The smallest power of two ≥ max(n, minimum): the project's one rounding
    for static widths (packed rows here, prompt buckets in the sampler)."""
    return 1 << (max(n, minimum, 1) - 1).bit_length()


def width_for(longest: int, limit: int) -> int:
    """Row width W: the next power of two ≥ the longest sequence, ≤ limit."""
    return min(limit, power_of_two(longest, 8))


def rows_per_micro_batch(width: int, max_tokens: int, divisor: int = 1) -> int:
    """Rows of width W in a micro-batch of at most `max_tokens` tokens per device.

    The budget is per device (as veRL's per-GPU token limit), so a micro-batch
    takes a device the same memory on any mesh: max_tokens // W rows on each
    of the `divisor` devices the rows are split over, and at least one row
    per device even when a row exceeds the budget.
    """
    return max(1, max_tokens // width) * divisor


def plan(
    lengths: np.ndarray,
    width: int,
    rows_multiple: int = 1,
    micro_rows: int | None = None,
) -> Plan:
    """First-fit decreasing placement of sequences of `lengths` in rows of `width`.

    Longest first (ties by index), each into the first row with room. The row
    count R is then rounded up: to `rows_multiple` × a bucket, and, with
    `micro_rows` (a multiple of rows_multiple), to whole micro-batches of
    that many rows when one is not enough (R ≤ micro_rows is one micro-batch
    of R rows: `grpo` splits min(R, micro_rows) rows at a time).
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > width:
        raise ValueError(f"a sequence of {lengths.max()} tokens exceeds {width=}")
    order = np.lexsort((np.arange(lengths.size), -lengths))
    free: list[int] = []  # free columns per open row
    row = np.zeros(lengths.size, np.int64)
    offset = np.zeros(lengths.size, np.int64)
    for i in order:
        n = int(lengths[i])
        r = next((j for j, room in enumerate(free) if room >= n), len(free))
        if r == len(free):
            free.append(width)
        row[i], offset[i] = r, width - free[r]
        free[r] -= n
    needed = max(len(free), 1)
    if micro_rows is not None and needed > micro_rows:
        rows = micro_rows * bucket(-(-needed // micro_rows))
    else:
        rows = rows_multiple * bucket(-(-needed // rows_multiple))
        rows = rows if micro_rows is None else min(rows, micro_rows)
    return Plan(row=row, offset=offset, rows=rows, width=width)


def loss_weights(resp_lengths: np.ndarray, agg: str) -> np.ndarray:
    """Per-token weight of sequence i's response tokens, [N] f32 (see module doc)."""
    lengths = np.asarray(resp_lengths, np.float64)
    if agg == "token-mean":
        return np.full(lengths.shape, 1.0 / max(lengths.sum(), 1.0), np.float32)
    seqs = max(int((lengths > 0).sum()), 1)
    if agg == "seq-mean-token-mean":
        return (1.0 / (seqs * np.maximum(lengths, 1.0))).astype(np.float32)
    if agg == "seq-mean-token-sum":
        return np.full(lengths.shape, 1.0 / seqs, np.float32)
    raise ValueError(f"unknown aggregation {agg!r}")


def pack(
    prompts: list[np.ndarray],
    responses: list[np.ndarray],
    advantages: np.ndarray,
    *,
    agg: str,
    limit: int,
    max_tokens: int | None = None,
    divisor: int = 1,
    response_logprobs: list[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The packed learner batch of sequences prompt_i + response_i (module doc).

    Args:
      prompts: N non-empty int token arrays (no padding).
      responses: N int token arrays (the generated tokens, no padding).
      advantages: Â, [N].
      agg: the loss aggregation mode (grpo.AGG_MODES), for `loss_weight`.
      limit: the widest row allowed (≥ every sequence).
      max_tokens: token budget per device and micro-batch; with it the rows
        come in micro-batches of `rows_per_micro_batch(W, max_tokens,
        divisor)` (or one smaller micro-batch); None: one micro-batch.
      divisor: devices the rows are split over; the row count is a multiple.
      response_logprobs: the sampler's log-probs of each response; adds
        `old_logp` (only needed when the learner does not recompute π_old).
    """
    p_len = np.array([len(p) for p in prompts], np.int64)
    r_len = np.array([len(r) for r in responses], np.int64)
    if (p_len < 1).any():
        raise ValueError("every sequence needs a prompt token to score its first")
    total = p_len + r_len
    width = width_for(int(total.max()), limit)
    micro_rows = None
    if max_tokens is not None:
        micro_rows = rows_per_micro_batch(width, max_tokens, divisor)
    layout = plan(total, width, divisor, micro_rows)
    r, w = layout.rows, width
    weights = loss_weights(r_len, agg)
    out = {
        "tokens": np.zeros((r, w), np.int32),
        "segment_ids": np.zeros((r, w), np.int32),
        "positions": np.zeros((r, w), np.int32),
        "loss_mask": np.zeros((r, w), bool),
        "advantages": np.zeros((r, w), np.float32),
        "loss_weight": np.zeros((r, w), np.float32),
    }
    if response_logprobs is not None:
        out["old_logp"] = np.zeros((r, w), np.float32)
    head_cols: list[list[np.ndarray]] = [[] for _ in range(r)]
    for i, (row, start) in enumerate(zip(layout.row, layout.offset)):
        end, resp = start + total[i], start + p_len[i]
        seq = slice(start, end)
        out["tokens"][row, seq] = np.concatenate([prompts[i], responses[i]])
        out["segment_ids"][row, seq] = i + 1
        out["positions"][row, seq] = np.arange(total[i])
        out["loss_mask"][row, resp:end] = True
        out["advantages"][row, seq] = advantages[i]
        out["loss_weight"][row, resp:end] = weights[i]
        if response_logprobs is not None:
            out["old_logp"][row, resp:end] = response_logprobs[i][: r_len[i]]
        head_cols[row].append(np.arange(resp - 1, end - 1))
    cols = [np.sort(np.concatenate(c)) if c else np.zeros(0, int) for c in head_cols]
    k = min(w, bucket(max(len(c) for c in cols), minimum=8))
    out["head_cols"] = np.full((r, k), w, np.int32)
    for row, c in enumerate(cols):
        out["head_cols"][row, : len(c)] = c
    out["mask"] = out["segment_ids"] != 0
    return out


def token_efficiency(batch: dict[str, np.ndarray]) -> float:
    """Real tokens / processed token slots of a learner batch."""
    return float(np.mean(batch["mask"]))


def from_rollout(roll) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(prompts, responses) token lists of a `sampler.Rollout`'s rows
    (padding dropped)."""
    prompts = [t[m] for t, m in zip(roll.prompt_tokens, roll.prompt_mask)]
    responses = [t[:n] for t, n in zip(roll.tokens, roll.lengths)]
    return prompts, responses


def abstract_batch(
    sequences: int,
    width: int,
    response_len: int,
    *,
    max_tokens: int | None,
    divisor: int,
    old_logp: bool,
) -> dict[str, tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each array `pack` gives for `sequences` sequences of
    `width` tokens each, `response_len` of them response tokens: the widest
    batch a step can pack (one sequence per row), computed by `pack`'s own
    rules (`width_for`, `plan`, `bucket`), so that a program compiled for it
    is the one the widest step runs."""
    w = width_for(width, width)
    micro_rows = (
        None if max_tokens is None else rows_per_micro_batch(w, max_tokens, divisor)
    )
    rows = plan(np.full(sequences, width), w, divisor, micro_rows).rows
    k = min(w, bucket(response_len, minimum=8))
    out = {
        "tokens": ((rows, w), "int32"),
        "segment_ids": ((rows, w), "int32"),
        "positions": ((rows, w), "int32"),
        "loss_mask": ((rows, w), "bool"),
        "advantages": ((rows, w), "float32"),
        "loss_weight": ((rows, w), "float32"),
    }
    if old_logp:
        out["old_logp"] = ((rows, w), "float32")
    out["head_cols"] = ((rows, k), "int32")
    out["mask"] = ((rows, w), "bool")
    return out


def learner_batch(
    roll, advantages_r: np.ndarray, learner_config, *, limit: int, divisor: int
) -> dict[str, np.ndarray]:
    """The learner's batch from a `sampler.Rollout`: its sequences packed.

    Prompt + response sequences are packed by first-fit decreasing into rows
    of a power-of-two width ≤ `limit`, in whole micro-batches of the
    learner's token budget (`step.LearnerConfig.max_tokens_per_micro_batch`)
    split over `divisor` devices, with per-token loss weights for
    `learner_config.agg`. The sampler's log-probs go in as old_logp only when
    the learner does not recompute π_old itself. The plan depends only on
    the (gathered) rollout, so every process builds the same batch and feeds
    its own rows.
    """
    prompts, responses = from_rollout(roll)
    logprobs = None
    if not learner_config.recompute_old_logp:
        logprobs = [lp[:n] for lp, n in zip(roll.logprobs, roll.lengths)]
    return pack(
        prompts,
        responses,
        advantages_r.astype(np.float32),
        agg=learner_config.agg,
        limit=limit,
        max_tokens=learner_config.max_tokens_per_micro_batch,
        divisor=divisor,
        response_logprobs=logprobs,
    )

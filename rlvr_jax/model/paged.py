"""Decode attention over a paged KV cache: one new query per row, each row's
keys and values in fixed-size pages of a shared pool.

Why pages: a slot cache gives every row a buffer as wide as prompt + the
longest allowed response, so memory, not the rows' real tokens, caps how
many rows decode at once. A pool of `page`-column pages, taken by a row as
it grows and returned when it ends, holds as many rows as their actual
tokens allow (`rollout.paged`).

Layout, per layer: keys and values are each [K, P, C, H] (K KV heads, P
pages, C columns per page, H head dim): the layout of the TPU decode kernel
(`jax.experimental.pallas.ops.tpu.paged_attention`), so one pool serves the
kernel and the pure-JAX path alike. A row's logical column c lives in page
`table_rq[r, c // C]` at column c % C; its first `kv_len_r[r]` columns are
attended.

Two implementations of the same math:
  `attend`        pure JAX: gathers `pages_per_block` pages of every row per
                  block and runs an online softmax over blocks up to the
                  longest row (any platform; the one used off TPU);
  `attend_pallas` the Pallas TPU kernel, which reads each row's own pages
                  only up to its length (interpret mode runs it on CPU, so
                  tests compare the two).

Axis legend (see `decoder.py`): r rows, k KV heads, g query heads per KV
head, h head dim, p pages, c columns of a page, q a row's logical pages.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rlvr_jax.model import decoder


def write(pages_kpch, new_rkh, page_r, offset_r):
    """`new_rkh` (one new key or value per row) written at column `offset_r`
    of page `page_r`; a row whose page is out of range (>= P) writes
    nothing, so idle rows leave the pool untouched."""
    new_krh = jnp.swapaxes(new_rkh, 0, 1).astype(pages_kpch.dtype)
    return pages_kpch.at[:, page_r, offset_r].set(new_krh, mode="drop")


def attend(
    q_rkgh,
    k_pages_kpch,
    v_pages_kpch,
    table_rq,
    kv_len_r,
    *,
    dtype,
    pages_per_block: int,
    blocks=None,
):
    """Attention of one query per row over its first `kv_len_r` columns.

    An online softmax (running max, normaliser, weighted sum) over blocks of
    `pages_per_block` pages; `blocks` (traced; default: all of a row's
    pages) bounds the blocks read, e.g. to the longest live row. Scores are
    masked, exponentiated and summed in fp32, as `decoder.attention_probs`
    does; the weights meet the values in `dtype`, normalised at the end.

    Args:
      q_rkgh: the new queries, RoPE applied, unscaled.
      k_pages_kpch, v_pages_kpch: the layer's pools.
      table_rq: int32 [R, Q] pool page of each logical page (Q a multiple of
        `pages_per_block`); entries past a row's length may be anything in
        range.
      kv_len_r: int32 [R] columns each row attends (>= 1 for a live row).
      dtype: the compute dtype.
      pages_per_block: pages per softmax block (static).
      blocks: int32 scalar block count, at most Q / pages_per_block.

    Returns:
      [R, K, G, H] attention outputs in `dtype`.
    """
    r, k, g, h = q_rkgh.shape
    q_pages = table_rq.shape[1]
    if q_pages % pages_per_block:
        raise ValueError(
            f"pages_per_block: {pages_per_block} does not divide the table's "
            f"{q_pages} pages per row"
        )
    c = k_pages_kpch.shape[2]
    width = pages_per_block * c
    if blocks is None:
        blocks = q_pages // pages_per_block

    def block(i):
        ids_rb = jax.lax.dynamic_slice_in_dim(
            table_rq, i * pages_per_block, pages_per_block, axis=1
        )
        # [K, R, pages_per_block, C, H] -> [K, R, block columns, H]
        k_krxh = k_pages_kpch[:, ids_rb].reshape(k, r, width, h)
        v_krxh = v_pages_kpch[:, ids_rb].reshape(k, r, width, h)
        scores_rkgx = jnp.einsum(
            "rkgh,krxh->rkgx",
            q_rkgh,
            k_krxh.astype(dtype),
            preferred_element_type=jnp.float32,
        ) / math.sqrt(h)
        column_x = i * width + jnp.arange(width)
        seen_rx = column_x[None] < kv_len_r[:, None]

        def weigh(weights_rkgx):
            return jnp.einsum(
                "rkgx,krxh->rkgh",
                weights_rkgx,
                v_krxh.astype(dtype),
                preferred_element_type=jnp.float32,
            )

        return scores_rkgx, seen_rx[:, None, None], weigh

    return blockwise_softmax(block, blocks, q_rkgh.shape, dtype)


def blockwise_softmax(block, blocks, shape_rkgh, dtype):
    """Attention over `blocks` blocks of columns with an online softmax
    (running max, normaliser and weighted sum), so no block's scores
    outlive it; `blocks` may be traced.

    `block(i)` gives block i's fp32 scores [R, K, G, X] (scaled), where they
    are seen (broadcastable to them; unseen ones are masked as
    `decoder.attention_probs` masks) and `weigh(weights_rkgx)`, the weights
    (in `dtype`) times the block's values, fp32 [R, K, G, H]. The scores are
    masked, exponentiated and summed in fp32; the result is normalised at
    the end and returned in `dtype`.
    """
    r, k, g, h = shape_rkgh

    def body(i, carry):
        max_rkg, sum_rkg, acc_rkgh = carry
        scores_rkgx, seen, weigh = block(i)
        scores_rkgx = jnp.where(seen, scores_rkgx, decoder.MASK_VALUE)
        new_max_rkg = jnp.maximum(max_rkg, scores_rkgx.max(-1))
        weights_rkgx = jnp.exp(scores_rkgx - new_max_rkg[..., None])
        rescale_rkg = jnp.exp(max_rkg - new_max_rkg)
        out_rkgh = weigh(weights_rkgx.astype(dtype))
        return (
            new_max_rkg,
            sum_rkg * rescale_rkg + weights_rkgx.sum(-1),
            acc_rkgh * rescale_rkg[..., None] + out_rkgh,
        )

    init = (
        jnp.full((r, k, g), -jnp.inf, jnp.float32),
        jnp.zeros((r, k, g), jnp.float32),
        jnp.zeros((r, k, g, h), jnp.float32),
    )
    _, sum_rkg, acc_rkgh = jax.lax.fori_loop(0, blocks, body, init)
    return (acc_rkgh / sum_rkg[..., None]).astype(dtype)


def attend_pallas(
    q_rkgh,
    k_pages_kpch,
    v_pages_kpch,
    table_rq,
    kv_len_r,
    *,
    dtype,
    pages_per_block: int,
    blocks=None,
):
    """`attend` through the Pallas TPU paged-attention kernel.

    The kernel reads each row's pages only up to its own length (rows of
    length 0 are skipped), so a step costs the live tokens' KV bytes, not
    the longest row's times the rows. It takes the keys and values in bf16
    and does not scale the scores, so the query is scaled here; `blocks` is
    not needed (the kernel stops at each row's length). TPU only, or in
    `pltpu.force_tpu_interpret_mode()` on CPU.
    """
    del blocks
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

    r, k, g, h = q_rkgh.shape
    q_rnh = (q_rkgh.astype(jnp.float32) / math.sqrt(h)).reshape(r, k * g, h)
    out_rnh = paged_attention(
        q_rnh.astype(dtype),
        k_pages_kpch,
        v_pages_kpch,
        kv_len_r,
        table_rq,
        pages_per_compute_block=pages_per_block,
    )
    return out_rnh.reshape(r, k, g, h).astype(dtype)


def kernel_supports(head_dim: int, cache_dtype) -> bool:
    """Whether `attend_pallas` takes this cache: the kernel computes in bf16
    (a float32 cache would be rounded) over whole 128-lane head dims."""
    return head_dim % 128 == 0 and jnp.dtype(cache_dtype) == jnp.bfloat16


def pages_from_prefill(kv_bskh, prompt_len_b, pages_per_prompt: int, page: int):
    """A prefill's left-padded keys or values as pages of compact columns.

    Args:
      kv_bskh: one layer's prefill keys or values [B, T, K, H], prompt b's
        real tokens in its last `prompt_len_b[b]` columns.
      prompt_len_b: int32 [B] real prompt tokens.
      pages_per_prompt: pages per prompt (>= T / page).
      page: columns per page.

    Returns:
      [K, B * pages_per_prompt, C, H]: prompt b's logical column c (its c-th
      real token) at page b * pages_per_prompt + c // C, column c % C;
      columns past the prompt hold copies of its last token (never
      attended: they lie beyond every row's length until overwritten).
    """
    b, t, k, h = kv_bskh.shape
    columns = pages_per_prompt * page
    logical_x = jnp.arange(columns)
    source_bx = jnp.minimum(t - prompt_len_b[:, None] + logical_x[None], t - 1)
    kv_bxkh = jnp.take_along_axis(kv_bskh, source_bx[:, :, None, None], axis=1)
    kv_bpckh = kv_bxkh.reshape(b * pages_per_prompt, page, k, h)
    return jnp.transpose(kv_bpckh, (2, 0, 1, 3))

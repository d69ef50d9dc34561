"""Single-token decoding of the decoder over packed per-layer weights.

A decode step multiplies a few rows (one token per response) by every weight
of the model, so its speed is the speed of reading the weights. `pack` lays
the weights out once per rollout for that access pattern:

  * one [O, D] ("out, in") matrix per projection, with the projections that
    read the same input fused: q|k|v into one, gate|up into one; the tied
    embedding already has this layout and serves as the head (and as the
    token lookup table) unchanged;
  * one array per layer (not the learner's stacked [L, ...] arrays), so no
    step slices or copies a layer's weights.

`step` is the model's forward for one position per row. It uses the same
math as `decoder.DecoderLayer` (`decoder.rms_norm`, `decoder.rope`,
`decoder.attention_probs`, `decoder.swiglu`); only the matmul layout and the KV
cache layout differ. `tests/test_decoding.py` checks its logits against a
teacher-forced `decoder.forward`, and `tests/test_sampler.py` the sampler built
on it against `transformers`.

Matmuls (`project`) are einsums on every platform, with fp32 operands on
CPU (see `project`). `tests/test_decoding.py` checks that a row's logits do
not depend on how many rows share its step.

KV cache layout, per layer: keys [R, K, H, S] and values [R, K, S, H]. Those
are the operand layouts the two attention contractions read in place (the
learner's [R, S, K, H] layout makes XLA transpose-copy the whole cache in
every step).

Axis legend (extends the one in `decoder.py`): r response rows, o projection
outputs, m attention features (n * h).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlvr_jax.model import decoder, paged

Params = Any


class LayerWeights(NamedTuple):
    """One decoder layer's weights in the decode layout (see `pack` for dtypes).

    Attributes:
      input_norm_d, post_attn_norm_d: RMSNorm scales (fp32, as the model).
      qkv_od: fused q|k|v projection, O = (n + 2k) * h rows.
      qkv_bias_o: the fused q|k|v bias; None for a model without biases.
      o_dm: attention output projection, m = n * h.
      gate_up_od: fused gate|up projection, O = 2 * f rows.
      down_df: MLP down projection.
    """

    input_norm_d: jax.Array
    qkv_od: jax.Array
    qkv_bias_o: jax.Array | None
    o_dm: jax.Array
    post_attn_norm_d: jax.Array
    gate_up_od: jax.Array
    down_df: jax.Array


class Weights(NamedTuple):
    """The whole model in the decode layout.

    Attributes:
      embed_vd: token embedding in the compute dtype (a lookup, not a matmul);
        None when the embedding is tied, the lookup then reads `head_vd`.
      layers: one `LayerWeights` per decoder layer.
      final_norm_d: final RMSNorm scale.
      head_vd: output head [V, D] (the embedding itself when tied).
    """

    embed_vd: jax.Array | None
    layers: tuple[LayerWeights, ...]
    final_norm_d: jax.Array
    head_vd: jax.Array


class Cache(NamedTuple):
    """Per-layer KV buffers in the decode layout (see module docstring).

    Attributes:
      k: one [R, K, H, S] key buffer per layer.
      v: one [R, K, S, H] value buffer per layer.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def pack(config: decoder.ModelConfig, params: Params, dtype=None) -> Weights:
    """Decode-layout weights from the model's parameter pytree (traceable).

    Args:
      config: the architecture.
      params: the model's parameter pytree.
      dtype: storage dtype of the matmul weights; default `config.dtype`.
        Weights are first rounded to `config.dtype` (as the model casts them
        at every use, so results are unchanged), then stored in `dtype`: on
        CPU, pass float32 for a bf16 model, since XLA:CPU has no bf16 matmul
        kernels and would otherwise convert every weight in every step.

    Norm scales stay as stored. Costs one copy of the weights, made once per
    rollout, outside the decode loop.
    """
    compute = jnp.dtype(config.dtype)
    store = compute if dtype is None else jnp.dtype(dtype)

    def cast(w):
        return w.astype(compute).astype(store)

    d, f, m = config.d_model, config.mlp_dim, config.n_heads * config.head_dim
    stacked = params["layers"]
    attn, mlp = stacked["attn"], stacked["mlp"]

    # Built layer by layer, so that each output is written by one fused
    # transpose (a stacked [L, ...] intermediate would be written, then
    # sliced, i.e. copied, once more).
    def out_in(*ws_d_o):  # [D, ...out] each -> one fused [O, D]
        return jnp.concatenate(
            [cast(w.reshape(w.shape[0], -1).T) for w in ws_d_o], axis=0
        )

    def flat(*bs_o):
        return jnp.concatenate([b.reshape(-1) for b in bs_o]).astype(compute)

    def layer(i):
        return LayerWeights(
            input_norm_d=stacked["input_norm"]["scale"][i],
            qkv_od=out_in(
                attn["q_kernel"][i], attn["k_kernel"][i], attn["v_kernel"][i]
            ),
            qkv_bias_o=(
                flat(attn["q_bias"][i], attn["k_bias"][i], attn["v_bias"][i])
                if config.attention_bias
                else None
            ),
            o_dm=cast(attn["o_kernel"][i].reshape(m, d).T),
            post_attn_norm_d=stacked["post_attn_norm"]["scale"][i],
            gate_up_od=out_in(mlp["gate_kernel"][i], mlp["up_kernel"][i]),
            down_df=cast(mlp["down_kernel"][i].reshape(f, d).T),
        )

    layers = tuple(layer(i) for i in range(config.n_layers))
    if config.tie_embeddings:
        # The head is the embedding: one copy serves the lookup too.
        embed_vd, head_vd = None, cast(params["embed"]["embedding"])
    else:
        embed_vd = params["embed"]["embedding"].astype(compute)
        head_vd = cast(jnp.swapaxes(params["lm_head"], 0, 1))
    return Weights(embed_vd, layers, params["final_norm"]["scale"], head_vd)


def project(x_rd: jax.Array, w_od: jax.Array, out_dtype=None) -> jax.Array:
    """x @ w.T for a few rows: [R, D] x [O, D] -> [R, O].

    Accumulates in fp32 and returns `out_dtype` (default: x's dtype), as the
    model's einsums do. On CPU the operands are upcast first: XLA:CPU's bf16
    dot does not multiply exactly in fp32, and the CPU sampler stores bf16
    weights as fp32 (`sampler.decode_weights_dtype`), which must not change
    a value.
    """
    out_dtype = jnp.dtype(out_dtype or x_rd.dtype)

    def einsum(x_rd, w_od):
        return jnp.einsum(
            "rd,od->ro", x_rd, w_od, preferred_element_type=jnp.float32
        ).astype(out_dtype)

    def fp32(x_rd, w_od):
        return einsum(x_rd.astype(jnp.float32), w_od.astype(jnp.float32))

    return jax.lax.platform_dependent(x_rd, w_od, cpu=fp32, default=einsum)


def repeat_rows(x, n: int, axis: int = 0):
    """Each row n times in a row (row i*n + j is copy j of row i)."""
    return x if n == 1 else jnp.repeat(x, n, axis=axis)


def cache_from_prefill(
    cache: decoder.KVCache, new: int, n: int, dtype
) -> tuple[Cache, jax.Array]:
    """Decode caches with `new` empty slots after the prompt's, rows repeated n×.

    Args:
      cache: the prefill's `decoder.KVCache` ([L, B, T, K, H] buffers).
      new: response slots to append.
      n: samples per prompt (row i*n + j reads prompt i).
      dtype: the cache dtype.

    Returns:
      (`Cache` with R = B * n rows and S = T + new slots, valid_rs: bool [R, S]
      marking real prompt tokens and every response slot).
    """

    def rows(x):
        return repeat_rows(x, n)

    k, v = [], []
    for i in range(cache.k_lbskh.shape[0]):
        k_bkht = jnp.transpose(cache.k_lbskh[i], (0, 2, 3, 1)).astype(dtype)
        v_bkth = jnp.transpose(cache.v_lbskh[i], (0, 2, 1, 3)).astype(dtype)
        k.append(rows(jnp.pad(k_bkht, ((0, 0), (0, 0), (0, 0), (0, new)))))
        v.append(rows(jnp.pad(v_bkth, ((0, 0), (0, 0), (0, new), (0, 0)))))
    b = cache.valid_bs.shape[0]
    valid_bs = jnp.concatenate([cache.valid_bs, jnp.ones((b, new), bool)], axis=1)
    return Cache(tuple(k), tuple(v)), rows(valid_bs)


def _write(cache, new, column, axis: int):
    """`new` (width 1 along `axis`) written at `column` of each row's cache.

    `column` is a scalar (every row writes the same column, one slice
    update) or int32 [R] (each row its own column, as continuous batching's
    slots are at different positions).
    """
    if jnp.ndim(column) == 0:
        start = [0] * cache.ndim
        start[axis] = column
        return jax.lax.dynamic_update_slice(cache, new, start)
    return jax.vmap(
        lambda c, x, i: jax.lax.dynamic_update_slice_in_dim(c, x, i, axis - 1)
    )(cache, new, column)


def _blocked_attention(config, q_rkgh, k_rkhs, v_rksh, mask_rs, block, blocks):
    """Attention over the first `blocks` × `block` cache columns only.

    An online softmax (running max, normaliser and weighted sum) over blocks
    of `block` columns, so a step reads the filled part of the cache, not its
    whole width; `blocks` is traced (a dynamic trip count). The scores are
    masked, exponentiated and summed in fp32 as `decoder.attention_probs` does;
    the weights meet the values in the compute dtype, normalised at the end.
    """
    h = q_rkgh.shape[-1]
    dtype = jnp.dtype(config.dtype)

    def one_block(i):
        start = i * block
        k_blk = jax.lax.dynamic_slice_in_dim(k_rkhs, start, block, axis=3)
        v_blk = jax.lax.dynamic_slice_in_dim(v_rksh, start, block, axis=2)
        m_blk = jax.lax.dynamic_slice_in_dim(mask_rs, start, block, axis=1)
        scores_rkgs = jnp.einsum(
            "rkgh,rkhs->rkgs",
            q_rkgh,
            k_blk.astype(dtype),
            preferred_element_type=jnp.float32,
        ) / math.sqrt(h)

        def weigh(weights_rkgs):
            return jnp.einsum(
                "rkgs,rksh->rkgh",
                weights_rkgs,
                v_blk.astype(dtype),
                preferred_element_type=jnp.float32,
            )

        return scores_rkgs, m_blk[:, None, None], weigh

    return paged.blockwise_softmax(one_block, blocks, q_rkgh.shape, dtype)


def _new_qkv(config, w: LayerWeights, x_rd, sin_r1h, cos_r1h):
    """The new position's query (RoPE'd, grouped by KV head), key and value."""
    r = x_rd.shape[0]
    n, k, h = config.n_heads, config.n_kv_heads, config.head_dim
    qkv_ro = project(x_rd, w.qkv_od)
    if w.qkv_bias_o is not None:
        qkv_ro = qkv_ro + w.qkv_bias_o
    q_r1nh = qkv_ro[:, : n * h].reshape(r, 1, n, h)
    k_r1kh = qkv_ro[:, n * h : (n + k) * h].reshape(r, 1, k, h)
    v_rkh = qkv_ro[:, (n + k) * h :].reshape(r, k, h)
    q_rkgh = decoder.rope(q_r1nh, sin_r1h, cos_r1h).reshape(r, k, n // k, h)
    k_rkh = decoder.rope(k_r1kh, sin_r1h, cos_r1h)[:, 0]
    return q_rkgh, k_rkh, v_rkh


def _attention(
    config,
    w: LayerWeights,
    x_rd,
    k_rkhs,
    v_rksh,
    sin_r1h,
    cos_r1h,
    mask_rs,
    slot,
    block=None,
    blocks=None,
):
    """Self-attention of one new position per row; writes it at `slot`."""
    r, h = x_rd.shape[0], config.head_dim
    q_rkgh, k_rkh, v_rkh = _new_qkv(config, w, x_rd, sin_r1h, cos_r1h)
    k_rkhs = _write(k_rkhs, k_rkh[..., None].astype(k_rkhs.dtype), slot, axis=3)
    v_rksh = _write(v_rksh, v_rkh[:, :, None].astype(v_rksh.dtype), slot, axis=2)
    if block is not None:
        out_rkgh = _blocked_attention(
            config, q_rkgh, k_rkhs, v_rksh, mask_rs, block, blocks
        )
        return project(out_rkgh.reshape(r, -1), w.o_dm), k_rkhs, v_rksh
    scores_rkgs = jnp.einsum(
        "rkgh,rkhs->rkgs",
        q_rkgh,
        k_rkhs.astype(config.dtype),
        preferred_element_type=jnp.float32,
    ) / math.sqrt(h)
    probs_rkgs = decoder.attention_probs(
        scores_rkgs, mask_rs[:, None, None], config.dtype
    )
    out_rkgh = jnp.einsum("rkgs,rksh->rkgh", probs_rkgs, v_rksh.astype(config.dtype))
    return project(out_rkgh.reshape(r, -1), w.o_dm), k_rkhs, v_rksh


def _mlp(config, w: LayerWeights, x_rd):
    """The layer's MLP block on the residual stream (residual added)."""
    gate_up_ro = project(
        decoder.rms_norm(config, x_rd, w.post_attn_norm_d), w.gate_up_od
    )
    f = config.mlp_dim
    return x_rd + project(
        decoder.swiglu(gate_up_ro[:, :f], gate_up_ro[:, f:]), w.down_df
    )


def _embed(config, weights: Weights, tokens_r):
    table_vd = weights.head_vd if weights.embed_vd is None else weights.embed_vd
    return jnp.take(table_vd, tokens_r, axis=0).astype(config.dtype)


def _logits(config, weights: Weights, x_rd):
    x_rd = decoder.rms_norm(config, x_rd, weights.final_norm_d)
    return project(x_rd, weights.head_vd, jnp.float32)


def step(
    config: decoder.ModelConfig,
    weights: Weights,
    cache: Cache,
    tokens_r: jax.Array,
    positions_r: jax.Array,
    slot: jax.Array,
    valid_rs: jax.Array,
    *,
    block: int | None = None,
    blocks: jax.Array | None = None,
) -> tuple[jax.Array, Cache]:
    """One token per row through the model; returns (fp32 logits [R, V], cache).

    Args:
      config: the architecture.
      weights: `pack` output.
      cache: the decode caches; this step's keys/values go to slot `slot`.
      tokens_r: int32 [R] the tokens to feed.
      positions_r: int32 [R] their RoPE positions.
      slot: int32 cache slot of this step: a scalar shared by all rows, or
        [R], one per row (continuous batching).
      valid_rs: bool [R, S] slots holding real tokens; slots after `slot`
        are hidden by causality whatever they hold.
      block: None reads the whole cache in one softmax. Otherwise attention
        reads only the first `blocks` blocks of `block` slots
        (`_blocked_attention`); S must be a multiple of `block` and every
        slot up to the largest `slot` must lie in those blocks.
      blocks: int32 scalar (traced) block count, with `block`.
    """
    if block is not None and valid_rs.shape[1] % block:
        raise ValueError(
            f"block: cache width {valid_rs.shape[1]} is not a multiple of {block}"
        )
    x_rd = _embed(config, weights, tokens_r)
    sin_r1h, cos_r1h = decoder.rope_tables(positions_r[:, None], config)
    s = valid_rs.shape[1]
    mask_rs = valid_rs & (jnp.arange(s)[None] <= jnp.reshape(slot, (-1, 1)))
    new_k, new_v = [], []
    for w, k_rkhs, v_rksh in zip(weights.layers, cache.k, cache.v):
        attn_rd, k_rkhs, v_rksh = _attention(
            config,
            w,
            decoder.rms_norm(config, x_rd, w.input_norm_d),
            k_rkhs,
            v_rksh,
            sin_r1h,
            cos_r1h,
            mask_rs,
            slot,
            block,
            blocks,
        )
        new_k.append(k_rkhs)
        new_v.append(v_rksh)
        x_rd = _mlp(config, w, x_rd + attn_rd)
    return _logits(config, weights, x_rd), Cache(tuple(new_k), tuple(new_v))


class Pages(NamedTuple):
    """Per-layer KV page pools (`model.paged` layout).

    Attributes:
      k: one [K, P, C, H] key pool per layer.
      v: one [K, P, C, H] value pool per layer.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def paged_step(
    config: decoder.ModelConfig,
    weights: Weights,
    pages: Pages,
    tokens_r: jax.Array,
    positions_r: jax.Array,
    write_page_r: jax.Array,
    table_rq: jax.Array,
    *,
    attend,
    pages_per_block: int,
    blocks: jax.Array | None = None,
) -> tuple[jax.Array, Pages]:
    """One token per row through the model over paged caches.

    The same math as `step`; only the cache differs. Row r's new key/value go
    to logical column `positions_r[r]` (prompts are stored compact, so a
    token's column is its RoPE position): pool page `write_page_r[r]`, column
    positions_r % C; a row whose `write_page_r` is out of range (idle) writes
    nothing. It then attends its first positions_r + 1 columns.

    Args:
      config, weights: as for `step`.
      pages: the pools; returns them updated.
      tokens_r, positions_r: int32 [R] tokens fed and their positions.
      write_page_r: int32 [R] the pool page of column positions_r.
      table_rq: int32 [R, Q] the rows' page tables.
      attend: `model.paged.attend` or `attend_pallas`.
      pages_per_block, blocks: as for `model.paged.attend`.

    Returns:
      (fp32 logits [R, V], pages).
    """
    c = pages.k[0].shape[2]
    offset_r = positions_r % c
    kv_len_r = positions_r + 1
    x_rd = _embed(config, weights, tokens_r)
    sin_r1h, cos_r1h = decoder.rope_tables(positions_r[:, None], config)
    new_k, new_v = [], []
    for w, k_kpch, v_kpch in zip(weights.layers, pages.k, pages.v):
        q_rkgh, k_rkh, v_rkh = _new_qkv(
            config, w, decoder.rms_norm(config, x_rd, w.input_norm_d), sin_r1h, cos_r1h
        )
        k_kpch = paged.write(k_kpch, k_rkh, write_page_r, offset_r)
        v_kpch = paged.write(v_kpch, v_rkh, write_page_r, offset_r)
        out_rkgh = attend(
            q_rkgh,
            k_kpch,
            v_kpch,
            table_rq,
            kv_len_r,
            dtype=jnp.dtype(config.dtype),
            pages_per_block=pages_per_block,
            blocks=blocks,
        )
        new_k.append(k_kpch)
        new_v.append(v_kpch)
        x_rd = _mlp(
            config, w, x_rd + project(out_rkgh.reshape(x_rd.shape[0], -1), w.o_dm)
        )
    return _logits(config, weights, x_rd), Pages(tuple(new_k), tuple(new_v))

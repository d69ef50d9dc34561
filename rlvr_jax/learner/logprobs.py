"""Token log-probs and entropy of the learner's batch, through the model.

Log-prob alignment (the learner's convention, used by every [B, T] array):
  the learner batch is prompt + response concatenated, tokens [B, T], left-
  padded prompt. `logp[b, t]` is log π(tokens[b, t] | tokens[b, :t]), computed
  from the logits at position t − 1; `entropy[b, t]` is the entropy of that
  same next-token distribution. Position 0 has no predecessor: its logp and
  entropy are 0 and it must not be in the loss mask. So a sampler log-prob for
  generated token j of a row whose response starts at column P goes to column
  P + j, exactly where that token sits in `tokens`, and `loss_mask[b, t]` is
  True exactly for those generated-token columns.

Packed batches (rlvr_jax/packing.py, what training feeds): several
sequences per row, told apart by `segment_ids`, with per-sequence
`positions`; the same alignment holds within each sequence. Such a batch also
carries `loss_weight` (each token's weight in the aggregation, computed on the
host from the whole mini-batch, so one weighted sum gives every mode exactly)
and `head_cols` (the hidden-state columns whose next token is a response
token): the LM head and log-softmax run only there, in the forward, the
backward and the old/reference passes. A batch without them (one sequence per
row, the head everywhere) is the unpacked reference the tests compare with.

Mixed precision: parameters and optimizer state are fp32; the model casts them
to its compute dtype (bf16) for the matmuls; logits, log-softmax, entropy,
losses, reductions and gradient accumulation are fp32. The [B, T, V] logits
are never materialised at once: the head and log-softmax run over sequence
chunks under `jax.checkpoint`, so the backward pass also holds one chunk.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlvr_jax import sharding
from rlvr_jax.model import decoder

Params = Any
Batch = dict[str, jax.Array]


# ------------------------------------------------------ log-probs and entropy
def logprobs_from_logits(
    logits_btv: jax.Array, targets_bt: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """Log π(target) and entropy H of softmax(logits / τ), in fp32.

    logp = z[target] − logsumexp(z);  H = logsumexp(z) − Σ_v softmax(z)_v z_v,
    with z = logits / τ.

    Args:
      logits_btv: [B, T, V] (any float dtype; upcast to fp32).
      targets_bt: int [B, T], the token each distribution is scored on.
      temperature: τ > 0.

    Returns:
      (logp_bt, entropy_bt), both fp32 [B, T].
    """
    # At least fp32 (bf16 logits are upcast; fp64 stays fp64 for grad checks).
    z_btv = logits_btv.astype(jnp.promote_types(logits_btv.dtype, jnp.float32))
    z_btv = z_btv / temperature
    # One exp pass over the vocabulary serves both logsumexp and the entropy
    # (the [.., V] elementwise work rivals the head matmul on CPU). The shift
    # m cancels out of both results, so it carries no gradient.
    m_bt1 = jax.lax.stop_gradient(jnp.max(z_btv, axis=-1, keepdims=True))
    shifted_btv = z_btv - m_bt1
    e_btv = jnp.exp(shifted_btv)
    sum_bt = jnp.sum(e_btv, axis=-1)
    log_sum_bt = jnp.log(sum_bt)
    # H = log Σ e^(z−m) − Σ softmax(z)·(z − m)
    entropy_bt = log_sum_bt - jnp.sum(e_btv * shifted_btv, axis=-1) / sum_bt
    target_bt = jnp.take_along_axis(shifted_btv, targets_bt[..., None], axis=-1)
    return target_bt[..., 0] - log_sum_bt, entropy_bt


def _next_token_scores(config, params, x_bkd, next_bk, temperature, chunk):
    """Scores of tokens `next_bk` under the head at hidden states `x_bkd`.

    [B, K] each, K the positions asked for (every position, or only those
    whose next token is a response token). Only one [B, chunk, V] fp32
    logits block exists at a time; jax.checkpoint makes the backward pass
    recompute a chunk's logits instead of storing all.
    """
    b, k, d = x_bkd.shape
    c = min(chunk, k)
    n = -(-k // c)
    pad = n * c - k
    if pad:
        x_bkd = jnp.pad(x_bkd, ((0, 0), (0, pad), (0, 0)))
        next_bk = jnp.pad(next_bk, ((0, 0), (0, pad)))
    # [n, B, c, ...]: the row axis stays intact, so its sharding carries over.
    x_nbcd = x_bkd.reshape(b, n, c, d).swapaxes(0, 1)
    next_nbc = next_bk.reshape(b, n, c).swapaxes(0, 1)

    # Only the head's weights enter the loop, so its backward carries a
    # gradient accumulator for them alone, not for every layer.
    head_params = {"embed": params["embed"]}
    if not config.tie_embeddings:
        head_params = {"lm_head": params["lm_head"]}

    @jax.checkpoint
    def one_chunk(head_params, x_bcd, next_bc):
        # The cast to the compute dtype happens inside `head`, so the head's
        # weight gradient is accumulated across chunks in fp32.
        logits_bcv = decoder.head(config, head_params, sharding.constrain_rows(x_bcd))
        logits_bcv = sharding.constrain_rows(logits_bcv)
        return logprobs_from_logits(logits_bcv, next_bc, temperature)

    def body(_, xs):
        return None, one_chunk(head_params, *xs)

    _, (logp_nbc, ent_nbc) = jax.lax.scan(body, None, (x_nbcd, next_nbc))
    logp_bk = logp_nbc.swapaxes(0, 1).reshape(b, n * c)[:, :k]
    ent_bk = ent_nbc.swapaxes(0, 1).reshape(b, n * c)[:, :k]
    return logp_bk, ent_bk


def logprobs_and_entropy(
    config: decoder.ModelConfig,
    params: Params,
    tokens_bt: jax.Array,
    mask_bt: jax.Array,
    positions_bt: jax.Array | None = None,
    *,
    temperature: float,
    logits_chunk: int = 512,
    segment_ids_bt: jax.Array | None = None,
    head_cols_bk: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-token log-probs and entropies of a prompt+response batch at τ.

    Differentiable (the loss's forward). Aligned with `tokens_bt` (see the
    module docstring): out[b, t] scores tokens[b, t] under the distribution
    predicted at position t − 1; out[:, 0] = 0.

    Args:
      config: model architecture (its `remat` flag is honoured).
      params: model parameters.
      tokens_bt: int [B, T], left-padded prompt then response (then padding),
        or packed sequences.
      mask_bt: bool [B, T], True for real (non-padding) tokens.
      positions_bt: RoPE positions [B, T]; derived from mask_bt when None.
      temperature: τ.
      logits_chunk: head positions per head chunk.
      segment_ids_bt: int [B, T] for packed rows (0 = padding); attention
        stays within a segment.
      head_cols_bk: int [B, K], the only columns t whose next-token
        distribution is computed (out[b, t + 1]); T marks an unused slot.
        Every other output is 0. None: all columns.

    Returns:
      (logp_bt, entropy_bt), fp32 [B, T].
    """
    x_btd, _ = decoder.hidden(
        config,
        params,
        tokens_bt,
        positions_bt,
        mask_bt,
        segment_ids_bt=segment_ids_bt,
        # FSDP: pin rows to the batch axes so weights are gathered, not
        # activations (a no-op outside the learner's mesh context).
        constrain=sharding.constrain_rows,
    )
    tokens_bt = jnp.asarray(tokens_bt, jnp.int32)
    b, t = tokens_bt.shape
    if head_cols_bk is None:
        # Every column; the last one's target is a dummy (token 0), dropped.
        next_bt = jnp.concatenate(
            [tokens_bt[:, 1:], jnp.zeros_like(tokens_bt[:, :1])], 1
        )
        lp_bt, ent_bt = _next_token_scores(
            config, params, x_btd, next_bt, temperature, logits_chunk
        )
        # Shift right by one: the score computed at t − 1 belongs to token t.
        zero_b1 = jnp.zeros_like(lp_bt[:, :1])
        logp_bt = jnp.concatenate([zero_b1, lp_bt[:, :-1]], axis=1)
        entropy_bt = jnp.concatenate([zero_b1, ent_bt[:, :-1]], axis=1)
        return logp_bt, entropy_bt
    # Gather the asked-for hidden states before the head, so the head's
    # matmul and the [.., V] log-softmax run on K positions instead of T.
    cols_bk = jnp.asarray(head_cols_bk, jnp.int32)
    x_bkd = jnp.take_along_axis(x_btd, jnp.minimum(cols_bk, t - 1)[..., None], axis=1)
    next_bk = jnp.take_along_axis(tokens_bt, jnp.minimum(cols_bk + 1, t - 1), axis=1)
    lp_bk, ent_bk = _next_token_scores(
        config, params, x_bkd, next_bk, temperature, logits_chunk
    )
    # Scatter to column t + 1; unused slots (t = T) fall outside and drop.
    rows_bk = jnp.broadcast_to(jnp.arange(b)[:, None], cols_bk.shape)

    def scatter(v_bk):
        return (
            jnp.zeros((b, t), v_bk.dtype)
            .at[rows_bk, cols_bk + 1]
            .set(v_bk, mode="drop")
        )

    return scatter(lp_bk), scatter(ent_bk)


def logprobs(
    config: decoder.ModelConfig,
    params: Params,
    batch: Batch,
    *,
    temperature: float,
    logits_chunk: int = 512,
) -> jax.Array:
    """log π(tokens[b, t] | tokens[b, :t]) at τ, fp32 [B, T]; 0 at t = 0.

    The no-gradient pass for reference log-probs (params = the frozen initial
    weights) or old log-probs. Reads batch["tokens"], batch["mask"] and, if
    present, batch["positions"], batch["segment_ids"] and batch["head_cols"]
    (packed rows; the head only at response positions). Jit it with
    `jit_logprobs`.
    """
    logp_bt, _ = batch_scores(config, params, batch, temperature, logits_chunk)
    return jax.lax.stop_gradient(logp_bt)


def batch_scores(config, params, batch, temperature, logits_chunk):
    """`logprobs_and_entropy` of a batch dict, packed or not."""
    return logprobs_and_entropy(
        config,
        params,
        batch["tokens"],
        batch["mask"],
        batch.get("positions"),
        temperature=temperature,
        logits_chunk=logits_chunk,
        segment_ids_bt=batch.get("segment_ids"),
        head_cols_bk=batch.get("head_cols"),
    )

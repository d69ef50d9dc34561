"""GRPO: advantages, token log-probs, the clipped policy loss and the train step.

Notation (Shao et al. 2024, "DeepSeekMath", and docs/recipe.md):
  r_i     reward of response i;  G groups of n responses to the same prompt
  Â_i     group-normalised advantage, broadcast to every token of response i
  π_θ     current policy at temperature τ: softmax(logits / τ)
  ρ_t     importance ratio π_θ(o_t) / π_old(o_t) = exp(logp_t − old_logp_t)
  ε       PPO clip range (ε_low, ε_high when asymmetric)
  β       KL coefficient against the frozen reference policy π_ref
  α       entropy-bonus coefficient;  c_pg  policy-gradient coefficient

  loss = c_pg · agg(max(−Â ρ_t, −Â clip(ρ_t, 1−ε_low, 1+ε_high)))
         − α · agg(H_t) + β · agg(KL_t)

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

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlvr_jax import model as M
from rlvr_jax import packing
from rlvr_jax import sharding as S

Params = Any
Batch = dict[str, jax.Array]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
KL_TYPES = ("k1", "abs", "mse", "low_var_kl")


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Loss and learner settings (hashable: a jit static argument).

    Defaults are the π1 recipe (docs/recipe.md).
    """

    temperature: float = 0.6  # τ: every log-prob and the entropy use logits / τ
    clip_eps: float = 0.2  # ε (ε_low; also ε_high unless clip_eps_high is set)
    clip_eps_high: float | None = None  # ε_high for asymmetric ("clip-higher")
    kl_coef: float = 0.001  # β; 0 disables the KL term (ref_logp not needed)
    kl_type: str = "low_var_kl"  # KL_t estimator, one of KL_TYPES
    entropy_coef: float = 0.001  # α, entropy bonus
    pg_coef: float = 1.0  # c_pg; 0 gives entropy-only training
    agg: str = "token-mean"  # one of AGG_MODES
    micro_batch_size: int | None = None  # rows per micro-batch; None: no split
    # Token budget per device and micro-batch (veRL's dynamic batch size):
    # rows of width W are split max_tokens // W rows per device at a time (see
    # packing.rows_per_micro_batch); when set it replaces micro_batch_size.
    max_tokens_per_micro_batch: int | None = None
    # True: π_old = the current params (stop-gradient), from the same forward
    # pass. That equals a separate recompute because train_step applies one
    # update per batch; for several updates per rollout batch, run `logprobs`
    # before the first one and pass the result as old_logp instead.
    recompute_old_logp: bool = True
    logits_chunk: int = 512  # sequence positions per head/log-softmax chunk
    # Per-layer gradient checkpointing in the gradient pass: the one switch
    # (the train step sets ModelConfig.remat from it; run configs never set
    # the model's own flag).
    remat: bool = True
    # How the learner's forward computes attention (ModelConfig.attention_kernel,
    # set from here like remat): "xla" or "flash" (the TPU kernel).
    attention_kernel: str = "xla"

    def __post_init__(self):
        if self.attention_kernel not in M.ATTENTION_KERNELS:
            raise ValueError(
                f"attention_kernel={self.attention_kernel!r} not in "
                f"{M.ATTENTION_KERNELS}"
            )
        if self.agg not in AGG_MODES:
            raise ValueError(f"agg={self.agg!r} not in {AGG_MODES}")
        if self.kl_type not in KL_TYPES:
            raise ValueError(f"kl_type={self.kl_type!r} not in {KL_TYPES}")
        if self.temperature <= 0:
            raise ValueError("the learner's temperature must be > 0")

    def replace(self, **changes) -> LearnerConfig:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------- advantages
def advantages(
    rewards: jax.Array, group_size: int, eps: float = 1e-6, norm_by_std: bool = True
) -> jax.Array:
    """GRPO outcome advantages Â_i = (r_i − mean_g) / (std_g + eps).

    Consecutive runs of `group_size` rewards form a group g (the responses to
    one prompt). std is the unbiased (N − 1) standard deviation. A group of one
    uses mean 0 and std 1 (as veRL), so Â = r / (1 + eps); in larger groups
    whose rewards are all equal Â is exactly 0.

    Args:
      rewards: r, shape [N] with N a multiple of group_size.
      group_size: n, responses per prompt.
      eps: added to the std.
      norm_by_std: False gives Dr.GRPO-style Â = r − mean_g.

    Returns:
      Â, float32 [N].
    """
    r_n = jnp.asarray(rewards, jnp.float32)
    if r_n.ndim != 1 or r_n.shape[0] % group_size:
        raise ValueError(
            f"rewards {r_n.shape} do not split into groups of {group_size}"
        )
    if group_size == 1:
        return r_n / (1.0 + eps) if norm_by_std else r_n
    r_gn = r_n.reshape(-1, group_size)
    mean_g1 = r_gn.mean(axis=1, keepdims=True)
    centred_gn = r_gn - mean_g1
    if norm_by_std:
        std_g1 = jnp.std(r_gn, axis=1, ddof=1, keepdims=True)
        centred_gn = centred_gn / (std_g1 + eps)
    # A float mean of equal values need not reproduce them exactly; force 0.
    equal_g1 = jnp.all(r_gn == r_gn[:, :1], axis=1, keepdims=True)
    return jnp.where(equal_g1, 0.0, centred_gn).reshape(-1)


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
        logits_bcv = M.head(config, head_params, S.constrain_rows(x_bcd))
        logits_bcv = S.constrain_rows(logits_bcv)
        return logprobs_from_logits(logits_bcv, next_bc, temperature)

    def body(_, xs):
        return None, one_chunk(head_params, *xs)

    _, (logp_nbc, ent_nbc) = jax.lax.scan(body, None, (x_nbcd, next_nbc))
    logp_bk = logp_nbc.swapaxes(0, 1).reshape(b, n * c)[:, :k]
    ent_bk = ent_nbc.swapaxes(0, 1).reshape(b, n * c)[:, :k]
    return logp_bk, ent_bk


def logprobs_and_entropy(
    config: M.ModelConfig,
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
    x_btd, _ = M.hidden(
        config,
        params,
        tokens_bt,
        positions_bt,
        mask_bt,
        segment_ids_bt=segment_ids_bt,
        # FSDP: pin rows to the batch axes so weights are gathered, not
        # activations (a no-op outside the learner's mesh context).
        constrain=S.constrain_rows,
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
    config: M.ModelConfig,
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
    logp_bt, _ = _batch_scores(config, params, batch, temperature, logits_chunk)
    return jax.lax.stop_gradient(logp_bt)


def _batch_scores(config, params, batch, temperature, logits_chunk):
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


# ----------------------------------------------------------- loss components
def kl_penalty(logp_bt: jax.Array, ref_logp_bt: jax.Array, kl_type: str) -> jax.Array:
    """Per-token KL(π_θ ‖ π_ref) estimate KL_t (Schulman's k-estimators).

    k1:          logp − ref_logp
    abs:         |logp − ref_logp|
    mse:         ½ (logp − ref_logp)²          (k2)
    low_var_kl:  e^x − x − 1 with x = ref_logp − logp, clamped to [−10, 10] (k3)
    """
    diff_bt = logp_bt - ref_logp_bt
    if kl_type == "k1":
        return diff_bt
    if kl_type == "abs":
        return jnp.abs(diff_bt)
    if kl_type == "mse":
        return 0.5 * jnp.square(diff_bt)
    if kl_type == "low_var_kl":
        # k3 exceeds 10 for x > 2.6 or x < −11, where the clamp makes it
        # constant; clipping x at ±20 first changes neither value nor gradient
        # but stops e^x overflowing to inf (whose 0 · inf gradient is NaN).
        x_bt = jnp.clip(-diff_bt, -20.0, 20.0)
        return jnp.clip(jnp.exp(x_bt) - x_bt - 1.0, -10.0, 10.0)
    raise ValueError(f"kl_type={kl_type!r} not in {KL_TYPES}")


def aggregate(
    x_bt: jax.Array,
    mask_bt: jax.Array,
    agg: str,
    *,
    num_tokens: jax.Array | None = None,
    num_seqs: jax.Array | None = None,
) -> jax.Array:
    """Reduces per-token values over the masked response tokens to a scalar.

      token-mean:           Σ_{b,t} m x / Σ_{b,t} m
      seq-mean-token-mean:  (1/S) Σ_b (Σ_t m x / Σ_t m)
      seq-mean-token-sum:   (1/S) Σ_b Σ_t m x

    S counts rows with at least one masked token (an all-padding row counts
    for nothing). `num_tokens` (Σ m) and `num_seqs` (S) default to this
    batch's own; pass the whole mini-batch's counts when x is one micro-batch,
    so the micro-batch results sum to the mini-batch value.
    """
    m_bt = jnp.asarray(mask_bt, bool)
    xm_bt = jnp.where(m_bt, x_bt, 0.0)
    if agg == "token-mean":
        if num_tokens is None:
            num_tokens = jnp.sum(m_bt)
        return jnp.sum(xm_bt) / jnp.maximum(num_tokens, 1).astype(jnp.float32)
    seq_tokens_b = jnp.sum(m_bt, axis=-1)
    if num_seqs is None:
        num_seqs = jnp.sum(seq_tokens_b > 0)
    seq_sum_b = jnp.sum(xm_bt, axis=-1)
    if agg == "seq-mean-token-mean":
        seq_b = seq_sum_b / jnp.maximum(seq_tokens_b, 1).astype(jnp.float32)
    elif agg == "seq-mean-token-sum":
        seq_b = seq_sum_b
    else:
        raise ValueError(f"agg={agg!r} not in {AGG_MODES}")
    return jnp.sum(seq_b) / jnp.maximum(num_seqs, 1).astype(jnp.float32)


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    entropy: jax.Array,
    *,
    clip_eps: float,
    kl_coef: float,
    entropy_coef: float,
    pg_coef: float,
    agg: str,
    clip_eps_high: float | None = None,
    kl_type: str = "low_var_kl",
    num_tokens: jax.Array | None = None,
    num_seqs: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO objective (to minimise) for one batch of response tokens.

    pg_t = max(−Â ρ_t, −Â clip(ρ_t, 1 − ε_low, 1 + ε_high)), ρ_t = e^{logp − old_logp}
    loss = c_pg · agg(pg) − α · agg(H) + β · agg(KL)

    The max picks the pessimistic branch for either sign of Â: for Â > 0 the
    ratio is capped above at 1 + ε_high, for Â < 0 below at 1 − ε_low.
    Masked-out positions are zeroed before any exp, so padding holding garbage
    (or inf) cannot leak NaNs into the loss or its gradient.

    Args:
      logp: log π_θ of each token, [B, T] (differentiable).
      old_logp: log π_old, [B, T] (treated as a constant).
      ref_logp: log π_ref, [B, T], or None when kl_coef == 0.
      advantages: Â, [B, T] or [B] (broadcast over tokens).
      mask: [B, T] bool/0-1, the response tokens to train on.
      entropy: H_t of π_θ, [B, T] (differentiable: the bonus trains it).
      clip_eps: ε_low (and ε_high unless clip_eps_high is given).
      kl_coef: β.
      entropy_coef: α.
      pg_coef: c_pg.
      agg: aggregation mode (see `aggregate`).
      clip_eps_high: ε_high; None means clip_eps.
      kl_type: KL estimator (see `kl_penalty`).
      num_tokens, num_seqs: mini-batch normalisers for micro-batches.
      weights: [B, T] per-token aggregation weights (packed batches, see
        rlvr_jax/packing.py); when given, agg(x) = Σ weights · x over the
        mask, replacing `agg` and num_seqs (token means still use num_tokens).

    Returns:
      (loss, metrics). metrics: pg_loss, kl, entropy (each aggregated as the
      loss is, so loss = c_pg·pg_loss − α·entropy + β·kl), clip_frac (share of
      tokens whose clipped branch is active) and ppo_kl (token mean of
      old_logp − logp); all normalised like the loss, so micro-batch values
      sum to the mini-batch value.
    """
    m_bt = jnp.asarray(mask, bool)
    adv_bt = jnp.asarray(advantages)
    adv_bt = adv_bt.astype(jnp.promote_types(adv_bt.dtype, jnp.float32))
    if adv_bt.ndim == 1:
        adv_bt = adv_bt[:, None]
    adv_bt = jnp.broadcast_to(adv_bt, m_bt.shape)
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high

    log_ratio_bt = jnp.where(m_bt, logp - jax.lax.stop_gradient(old_logp), 0.0)
    adv_bt = jnp.where(m_bt, adv_bt, 0.0)
    ratio_bt = jnp.exp(log_ratio_bt)
    unclipped_bt = -adv_bt * ratio_bt
    clipped_bt = -adv_bt * jnp.clip(ratio_bt, 1.0 - eps_low, 1.0 + eps_high)
    pg_bt = jnp.maximum(unclipped_bt, clipped_bt)

    if weights is None:
        agg_fn = functools.partial(
            aggregate, mask_bt=m_bt, agg=agg, num_tokens=num_tokens, num_seqs=num_seqs
        )
    else:
        w_bt = jnp.where(m_bt, weights, 0.0)
        agg_fn = lambda x_bt: jnp.sum(w_bt * jnp.where(m_bt, x_bt, 0.0))
    token_mean = functools.partial(
        aggregate, mask_bt=m_bt, agg="token-mean", num_tokens=num_tokens
    )
    pg_loss = agg_fn(pg_bt)
    ent = agg_fn(jnp.where(m_bt, entropy, 0.0))
    if ref_logp is None:
        if kl_coef:
            raise ValueError("kl_coef != 0 needs ref_logp")
        kl = jnp.zeros((), jnp.float32)
    else:
        logp_m = jnp.where(m_bt, logp, 0.0)
        ref_m = jnp.where(m_bt, jax.lax.stop_gradient(ref_logp), 0.0)
        kl = agg_fn(kl_penalty(logp_m, ref_m, kl_type))
    loss = pg_coef * pg_loss - entropy_coef * ent + kl_coef * kl
    metrics = dict(
        pg_loss=pg_loss,
        kl=kl,
        entropy=ent,
        clip_frac=token_mean((clipped_bt > unclipped_bt).astype(jnp.float32)),
        ppo_kl=token_mean(-log_ratio_bt),
    )
    return loss, metrics


# ----------------------------------------------------------- gradient pass
def _microbatch_loss(params, batch, num_tokens, num_seqs, model_config, cfg):
    logp_bt, entropy_bt = _batch_scores(
        model_config, params, batch, cfg.temperature, cfg.logits_chunk
    )
    if cfg.recompute_old_logp:
        old_logp_bt = jax.lax.stop_gradient(logp_bt)
    else:
        old_logp_bt = batch["old_logp"]
    # With β = 0 a given ref_logp still yields the KL metric.
    ref_logp_bt = batch.get("ref_logp")
    loss, metrics = policy_loss(
        logp_bt,
        old_logp_bt,
        ref_logp_bt,
        batch["advantages"],
        batch["loss_mask"],
        entropy_bt,
        clip_eps=cfg.clip_eps,
        clip_eps_high=cfg.clip_eps_high,
        kl_coef=cfg.kl_coef,
        kl_type=cfg.kl_type,
        entropy_coef=cfg.entropy_coef,
        pg_coef=cfg.pg_coef,
        agg=cfg.agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        weights=batch.get("loss_weight"),
    )
    return loss, dict(metrics, loss=loss)


def loss_and_grads(
    params: Params,
    batch: Batch,
    *,
    model_config: M.ModelConfig,
    learner_config: LearnerConfig,
    mesh: Mesh | None = None,
) -> tuple[Params, dict[str, jax.Array]]:
    """Gradient of the mini-batch loss, accumulated over micro-batches.

    Every micro-batch normalises by the whole mini-batch's token and sequence
    counts, so the summed gradient is the full-batch gradient for every
    aggregation mode, whatever the micro-batch size. Micro-batch i takes rows
    i, i + n, i + 2n, ... (n micro-batches): with rows sharded contiguously,
    each micro-batch is then spread evenly over all devices.

    Args:
      params: fp32 parameters.
      batch: see `train_step`.
      model_config: the architecture; its `remat` and `attention_kernel`
        are replaced by learner_config's.
      learner_config: loss and micro-batching settings.
      mesh: when given, activations and micro-batches are constrained to
        rows over ('data', 'fsdp') and the gradient accumulator to the params'
        rules (see sharding.constrain_rows).

    Returns:
      (grads, metrics): fp32 grads like params; metrics as `policy_loss`'s
      plus loss, num_tokens, num_seqs.
    """
    with _mesh_context(mesh):
        return _loss_and_grads(params, batch, model_config, learner_config, mesh)


def _mesh_context(mesh: Mesh | None):
    """Traces under `mesh`, so the model's `constrain_rows` calls take effect."""
    if mesh is None:
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def _loss_and_grads(params, batch, model_config, learner_config, mesh):
    cfg = learner_config
    model_config = model_config.replace(
        remat=cfg.remat, attention_kernel=cfg.attention_kernel
    )
    mask_bt = jnp.asarray(batch["loss_mask"], bool)
    num_tokens = jnp.sum(mask_bt)
    num_seqs = _num_seqs(mask_bt, batch.get("segment_ids"))
    grad_fn = jax.grad(_microbatch_loss, has_aux=True)
    statics = dict(model_config=model_config, cfg=cfg)

    rows = batch["tokens"].shape[0]
    mb = _micro_rows(cfg, batch["tokens"].shape, mesh)
    n = _micro_batches(rows, mb)
    if n == 1:
        grads, metrics = grad_fn(params, batch, num_tokens, num_seqs, **statics)
    else:

        def split(x):
            return _split_micro(x, mb, n, mesh)

        def body(acc, micro):
            g, m = grad_fn(params, micro, num_tokens, num_seqs, **statics)
            return jax.tree.map(jnp.add, acc, g), m

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        if mesh is not None:  # the accumulator lives where the params do
            zeros = jax.lax.with_sharding_constraint(
                zeros, S.tree_shardings(params, mesh)
            )
        grads, metrics_n = jax.lax.scan(body, zeros, jax.tree.map(split, batch))
        metrics = jax.tree.map(lambda x: jnp.sum(x, axis=0), metrics_n)
    metrics.update(num_tokens=num_tokens, num_seqs=num_seqs)
    return grads, metrics


def _num_seqs(mask_bt: jax.Array, segment_ids_bt: jax.Array | None) -> jax.Array:
    """Sequences with at least one loss token: rows, or segments when packed.

    A packed sequence's response tokens are contiguous and end its segment,
    so each one ends exactly once: where the next column is not a loss token
    of the same segment.
    """
    if segment_ids_bt is None:
        return jnp.sum(jnp.any(mask_bt, axis=-1))
    seg_bt = jnp.asarray(segment_ids_bt)
    same_next_bt = jnp.pad(
        mask_bt[:, 1:] & (seg_bt[:, 1:] == seg_bt[:, :-1]), ((0, 0), (0, 1))
    )
    return jnp.sum(mask_bt & ~same_next_bt)


def _micro_rows(cfg: LearnerConfig, shape: tuple[int, ...], mesh: Mesh | None) -> int:
    """Rows per micro-batch of a [rows, width] batch: by token budget or rows."""
    rows, width = shape[:2]
    if cfg.max_tokens_per_micro_batch:
        divisor = 1 if mesh is None else S.batch_divisor(mesh)
        budget = cfg.max_tokens_per_micro_batch
        return min(rows, packing.rows_per_micro_batch(width, budget, divisor))
    return cfg.micro_batch_size or rows


def _micro_batches(rows: int, mb: int) -> int:
    if rows % mb:
        raise ValueError(f"batch of {rows} rows is not a multiple of {mb=}")
    return rows // mb


def _split_micro(x: jax.Array, mb: int, n: int, mesh: Mesh | None) -> jax.Array:
    """[rows, ...] -> [n, mb, ...]; micro-batch i holds rows i, i + n, i + 2n, ...

    With rows sharded contiguously, each micro-batch is spread evenly over
    all devices (its rows stay sharded over ('data', 'fsdp')).
    """
    x = x.reshape(mb, n, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
        spec = S.fit_spec(P(None, S.BATCH_AXES), x.shape, mesh)
        x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return x


def _merge_micro(x_n: jax.Array) -> jax.Array:
    """The inverse of `_split_micro`: [n, mb, ...] -> [rows, ...]."""
    n, mb = x_n.shape[:2]
    return x_n.swapaxes(0, 1).reshape(n * mb, *x_n.shape[2:])


# -------------------------------------------------------------- train state
class TrainState(NamedTuple):
    """Everything an optimizer step changes (a pytree; checkpoint it whole).

    Attributes:
      params: fp32 model parameters.
      opt_state: optax state (mirrors params; sharded like them).
      step: int32, train_step calls so far (applied + skipped).
      skipped: int32, updates skipped for a non-finite loss or gradient.
    """

    params: Params
    opt_state: optax.OptState
    step: jax.Array
    skipped: jax.Array


def _new_state(params, tx):
    # `+ 0` gives the state its own buffers even when `params` is passed in,
    # so donating the state never invalidates the caller's (reference) params.
    params = jax.tree.map(lambda p: p + jnp.zeros((), p.dtype), params)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params, tx.init(params), zero, zero)


def abstract_train_state(
    model_config: M.ModelConfig, tx: optax.GradientTransformation
) -> TrainState:
    """ShapeDtypeStructs of the train state; allocates nothing."""
    return jax.eval_shape(lambda p: _new_state(p, tx), M.abstract_params(model_config))


def state_shardings(
    model_config: M.ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """NamedShardings of the train state (params rules; counters replicated)."""
    return S.tree_shardings(abstract_train_state(model_config, tx), mesh)


def sharded_abstract_state(
    model_config: M.ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """ShapeDtypeStructs carrying their shardings: a restore or `lower` target."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_train_state(model_config, tx),
        state_shardings(model_config, tx, mesh),
    )


def init_train_state(
    model_config: M.ModelConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    params: Params | None = None,
    rng: jax.Array | None = None,
) -> TrainState:
    """A train state created directly in its shardings (never whole on one device).

    Args:
      model_config: the architecture.
      tx: the optimizer (see rlvr_jax.optimizer.adamw).
      mesh: device mesh.
      params: initial parameters, e.g. from `params.load_hf(...,
        shardings=sharding.tree_shardings(model.abstract_params(cfg), mesh))`.
        They are copied, so they stay valid as the frozen reference params.
      rng: random init instead (tests, `tiny` runs).
    """
    shardings = state_shardings(model_config, tx, mesh)
    if params is not None:
        return jax.jit(lambda p: _new_state(p, tx), out_shardings=shardings)(params)
    if rng is None:
        raise ValueError("pass params or rng")
    init = lambda key: _new_state(M.init_params(model_config, key), tx)
    return jax.jit(init, out_shardings=shardings)(rng)


# -------------------------------------------------------------- train step
def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model_config: M.ModelConfig,
    learner_config: LearnerConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on one mini-batch (pure; jit with `jit_train_step`).

    Args:
      state: the train state.
      batch: dict of arrays with B rows (B a multiple of the micro-batch):
        tokens     int32 [B, T]  left-padded prompt + response (+ right pad),
                                 or packed sequences (rlvr_jax/packing.py)
        mask       bool  [B, T]  True for real tokens (attention validity)
        positions  int32 [B, T]  optional; RoPE positions, else from mask
        loss_mask  bool  [B, T]  True at generated response tokens to train on
        advantages f32   [B] or [B, T]  Â
        old_logp   f32   [B, T]  log π_old, aligned like logp; only read when
                                 not learner_config.recompute_old_logp
        ref_logp   f32   [B, T]  log π_ref (needed when kl_coef != 0)
        packed batches add (see rlvr_jax/packing.py):
        segment_ids int32 [B, T] sequence of each token, 0 for padding
        loss_weight f32  [B, T]  per-token aggregation weight
        head_cols  int32 [B, K]  columns where the LM head runs
      model_config: the architecture.
      learner_config: loss settings.
      tx: the optimizer.
      mesh: optional; constrains micro-batch shardings.

    Returns:
      (new_state, metrics) with scalar metrics: loss, pg_loss, kl, entropy,
      clip_frac, ppo_kl, num_tokens, num_seqs, grad_norm (global, before
      clipping), skipped (1 if this update was skipped) and skipped_total.
      A non-finite loss or gradient norm leaves params and opt_state unchanged.
    """
    grads, metrics = loss_and_grads(
        state.params,
        batch,
        model_config=model_config,
        learner_config=learner_config,
        mesh=mesh,
    )
    new_state, update_metrics = apply_update(state, grads, metrics["loss"], tx)
    metrics.update(update_metrics)
    return new_state, metrics


def apply_update(
    state: TrainState, grads: Params, loss: jax.Array, tx: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The optimizer step of `train_step` on accumulated `grads`.

    Returns (new_state, metrics: grad_norm, skipped, skipped_total); a
    non-finite `loss` or gradient norm leaves params and opt_state unchanged.
    """
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(ok, new, old)
    skipped = state.skipped + (~ok).astype(jnp.int32)
    new_state = TrainState(
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        step=state.step + 1,
        skipped=skipped,
    )
    metrics = dict(
        grad_norm=grad_norm, skipped=(~ok).astype(jnp.int32), skipped_total=skipped
    )
    return new_state, metrics


def jit_train_step(
    model_config: M.ModelConfig,
    learner_config: LearnerConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """`train_step` jitted with state/batch shardings and the state donated.

    The returned fn(state, batch) expects the state from `init_train_state`
    and a batch from `sharding.shard_batch`; metrics come back replicated.
    """
    shardings = state_shardings(model_config, tx, mesh)
    step = functools.partial(
        train_step,
        model_config=model_config,
        learner_config=learner_config,
        tx=tx,
        mesh=mesh,
    )
    return jax.jit(
        step,
        in_shardings=(shardings, S.batch_sharding(mesh)),
        out_shardings=(shardings, S.replicated(mesh)),
        donate_argnums=0,
    )


def jit_logprobs(
    model_config: M.ModelConfig, learner_config: LearnerConfig, mesh: Mesh
) -> Callable[[Params, Batch], jax.Array]:
    """`logprobs` at the learner's τ, jitted: fn(params, batch) -> logp [B, T].

    Params keep whatever sharding they have (fp32 or a bf16 copy of the
    reference weights both work); the result is row-sharded like a batch, so
    it can be put straight into the batch as old_logp / ref_logp. The batch
    runs in the train step's micro-batches (`micro_batch_size` rows or the
    token budget), so its activations take a micro-batch's memory, not the
    whole batch's.
    """

    model_config = model_config.replace(
        attention_kernel=learner_config.attention_kernel
    )

    def one(params, batch):
        return logprobs(
            model_config,
            params,
            batch,
            temperature=learner_config.temperature,
            logits_chunk=learner_config.logits_chunk,
        )

    def fn(params, batch):
        with _mesh_context(mesh):
            rows = batch["tokens"].shape[0]
            mb = _micro_rows(learner_config, batch["tokens"].shape, mesh)
            n = _micro_batches(rows, mb)
            if n == 1:
                return one(params, batch)
            micro = jax.tree.map(lambda x: _split_micro(x, mb, n, mesh), batch)
            return _merge_micro(jax.lax.map(lambda b: one(params, b), micro))

    return jax.jit(fn, out_shardings=S.batch_sharding(mesh))

"""GRPO's loss math: advantages, the KL estimators, aggregation and the
clipped policy loss. Pure functions of arrays, each tested against
hand-computed values; no model, no mesh.

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

Every [B, T] array is aligned as the learner's log-probs are
(`rlvr_jax.learner.logprobs`): column t scores tokens[b, t].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
KL_TYPES = ("k1", "abs", "mse", "low_var_kl")


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

"""PPO's critic-side math, exact to veRL: token rewards, KL in the reward,
GAE, whitening, the clipped value loss and the explained-variance metric.

Pure functions of [B, T] arrays (fp32); no model, no mesh. Each mirrors the
reference run's veRL (github.com/ypwang61/One-Shot-RLVR):

  token_level_rewards         verl/workers/reward_manager/naive.py
                              NaiveRewardManager.__call__
  kl_in_reward                verl/trainer/ppo/ray_trainer.py apply_kl_penalty,
                              with core_algos.py kl_penalty
  critic_mask                 verl/workers/critic/dp_critic.py (the mask of
                              compute_values and update_critic)
  gae_advantages_and_returns  dp_critic.py compute_values (its masking), then
                              core_algos.py compute_gae_advantage_return
  masked_mean / masked_var /  verl/utils/torch_functional.py, same names
  masked_whiten
  value_loss                  core_algos.py compute_value_loss, as
                              dp_critic.py update_critic calls it
  explained_variance          ray_trainer.py compute_data_metrics,
                              'critic/vf_explained_var'

Notation (Schulman et al. 2016, "GAE"; Ouyang et al. 2022 for KL in the reward):
  s          sequence score (the verifier's reward) of one response
  r_t        token-level reward; r_t = s·[t = L−1] − β·KL_t
  L          a row's response length (its mask is the prefix t < L)
  V_t        critic value before response token t (V_L: after the last one)
  γ, λ       discount and GAE parameter (veRL's defaults: 1.0, 1.0)
  δ_t        r_t + γ V_{t+1} − V_t
  Â_t        Σ_k (γλ)^k δ_{t+k}, then whitened over the batch's tokens
  R_t        Â_t + V_t (the critic's target, from the unwhitened Â)
  ε_v        the value clip range (veRL's critic.cliprange_value, 0.5)

Axis legend: b rows (responses), t response positions; column t of every
array is response token t, as in `rlvr_jax.learner.loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlvr_jax.learner import loss as loss_lib

# veRL's algorithm.kl_penalty kinds it implements ("full" raises there too),
# mapped to this package's estimator names.
KL_IN_REWARD_KINDS = {
    "kl": "k1",
    "abs": "abs",
    "mse": "mse",
    "low_var_kl": "low_var_kl",
}
# masked_whiten's variance floor (torch_functional.masked_whiten).
WHITEN_EPS = 1e-8
# compute_data_metrics' floor under Var(R) in the explained variance.
EXPLAINED_VAR_EPS = 1e-5


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _bool(mask: jax.Array) -> jax.Array:
    return jnp.asarray(mask).astype(bool)


# ------------------------------------------------------------- token rewards
def token_level_rewards(scores_b: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """Places each row's sequence score at its last valid token.

    veRL's reward manager writes `reward[i, L_i − 1] = s_i` into zeros. For an
    empty row (L = 0) that index is −1, which Python wraps to the last column;
    this mirrors it (such rows are masked out everywhere else).

    Args:
      scores_b: s, [B].
      mask_bt: [B, T] response mask, each row a prefix.

    Returns:
      r, float32 [B, T]: zero except s_b at column L_b − 1.
    """
    m_bt = _bool(mask_bt)
    num_cols = m_bt.shape[1]
    len_b = jnp.sum(m_bt, axis=1)
    last_b = jnp.mod(len_b - 1, num_cols)  # Python's index −1 → T − 1
    at_last_bt = jnp.arange(num_cols)[None, :] == last_b[:, None]
    return jnp.where(at_last_bt, _f32(scores_b)[:, None], 0.0)


def kl_in_reward(
    rewards_bt: jax.Array,
    logp_bt: jax.Array,
    ref_logp_bt: jax.Array,
    mask_bt: jax.Array,
    coef: float,
    kind: str,
) -> tuple[jax.Array, jax.Array]:
    """veRL's `apply_kl_penalty`: r_t ← r_t − β·KL_t on the response tokens.

    KL_t is `kl_penalty(old_log_probs, ref_log_prob, kind)`: veRL passes the
    log-probs of the policy that sampled (recomputed before the update), so
    `logp_bt` is π_old here, not the policy being trained. Kinds: "kl"
    (logp − ref_logp), "abs", "mse" (½ diff²), "low_var_kl" (k3, clamped to
    ±10); veRL raises for "full" and any other kind, so does this.

    Only the fixed coefficient (veRL's kl_ctrl.type="fixed", default
    kl_coef 0.001) is in scope: the adaptive controller would feed the returned
    metric back into β between steps, outside this pure function.

    Padding holds 0 where veRL holds KL·0; masking with `where` (not a
    product) also keeps garbage log-probs there from turning into NaN.

    Args:
      rewards_bt: token-level scores, [B, T] (see `token_level_rewards`).
      logp_bt: log π_old of each response token, [B, T].
      ref_logp_bt: log π_ref, [B, T].
      mask_bt: [B, T] response mask.
      coef: β.
      kind: the KL estimator, one of KL_IN_REWARD_KINDS.

    Returns:
      (rewards_bt − β·KL_bt, kl): kl is veRL's 'critic/kl' metric, the mean
      over rows of each row's token-mean KL (an empty row divides 0 by 0:
      NaN, as in veRL).
    """
    if kind not in KL_IN_REWARD_KINDS:
        raise NotImplementedError(
            f"kl_penalty kind={kind!r}: veRL implements {list(KL_IN_REWARD_KINDS)}"
        )
    m_bt = _bool(mask_bt)
    kl_bt = loss_lib.kl_penalty(
        jnp.where(m_bt, _f32(logp_bt), 0.0),
        jnp.where(m_bt, _f32(ref_logp_bt), 0.0),
        KL_IN_REWARD_KINDS[kind],
    )
    kl_bt = jnp.where(m_bt, kl_bt, 0.0)
    kl_b = masked_mean(kl_bt, m_bt, axis=-1)
    return _f32(rewards_bt) - coef * kl_bt, jnp.mean(kl_b)


# ------------------------------------------------------------ masked moments
def masked_mean(x: jax.Array, mask: jax.Array, axis: int | None = None) -> jax.Array:
    """Σ m·x / Σ m over `axis` (all axes when None); 0/0 = NaN when empty."""
    m = _bool(mask)
    total = jnp.sum(jnp.where(m, _f32(x), 0.0), axis=axis)
    return total / jnp.sum(m, axis=axis).astype(jnp.float32)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Unbiased variance of the masked entries: n/(n − 1) · masked mean of
    (x − mean)², n = Σ m (veRL's masked_var, unbiased=True).

    veRL raises for n < 2; a traced function cannot, so n < 2 gives NaN.
    """
    m = _bool(mask)
    n = jnp.sum(m).astype(jnp.float32)
    centred = _f32(x) - masked_mean(x, m)
    var = masked_mean(jnp.square(centred), m) * (n / (n - 1.0))
    return jnp.where(n < 2, jnp.nan, var)


def masked_whiten(
    values_bt: jax.Array, mask_bt: jax.Array, shift_mean: bool = True
) -> jax.Array:
    """(x − mean) / √(var + 1e-8) with the masked mean and unbiased variance.

    Every entry is transformed, padding included: veRL does not zero it, so
    padded advantages come out non-zero (−mean/std past the end) and every
    loss must mask them.
    shift_mean=False adds the mean back, keeping only the rescaling.
    """
    x_bt = _f32(values_bt)
    mean = masked_mean(x_bt, mask_bt)
    var = masked_var(x_bt, mask_bt)
    whitened_bt = (x_bt - mean) * jax.lax.rsqrt(var + WHITEN_EPS)
    return whitened_bt if shift_mean else whitened_bt + mean


# ----------------------------------------------------------------------- GAE
def critic_mask(mask_bt: jax.Array) -> jax.Array:
    """The mask veRL's critic uses: the response mask shifted right by one.

    dp_critic.py takes `attention_mask[:, -T-1:-1]`; the first column is the
    last prompt token (always real: prompts are left-padded), column t ≥ 1 is
    response token t − 1. So a row of length L < T has L + 1 ones: the values
    V_0..V_L are kept, V_L being the critic's value after the last token.
    The value loss trains on these positions too (its target at L is 0, see
    `gae_advantages_and_returns`).

    Returns:
      bool [B, T].
    """
    m_bt = _bool(mask_bt)
    first_b1 = jnp.ones_like(m_bt[:, :1])
    return jnp.concatenate([first_b1, m_bt[:, :-1]], axis=1)


def gae_advantages_and_returns(
    rewards_bt: jax.Array,
    values_bt: jax.Array,
    mask_bt: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """GAE advantages (whitened) and returns, as veRL computes them.

    Mirrors dp_critic.compute_values (values zeroed outside `critic_mask`)
    followed by core_algos.compute_gae_advantage_return:

      δ_t = r_t + γ V_{t+1} − V_t   (V_T = 0: past the last column)
      Â_t = δ_t + γλ Â_{t+1}        (a reverse scan over all T columns)
      R_t = Â_t + V_t
      Â   ← masked_whiten(Â, mask)  (over the whole batch's response tokens)

    The scan ignores the mask; what ends an episode is the values. A row of
    length L < T keeps V_L (the critic's value after its last token) and has
    V = r = 0 beyond, so Â_L = −V_L and

      Â_{L−1} = r_{L−1} − V_{L−1} + γ(1 − λ) V_L.

    With veRL's default λ = 1 the bootstrap V_L cancels; with λ < 1 it
    leaks into every advantage of the row, and the critic is trained towards
    R_L = 0 at that position. A full row (L = T) bootstraps from 0.

    Only Â is whitened (shift_mean=True: mean 0, unbiased variance 1 over the
    masked tokens); R is built from the raw Â. Padded entries of Â are not
    zero (see `masked_whiten`); those of R are 0 at L and beyond.

    Args:
      rewards_bt: r, [B, T], used as given: zero past each row's end, as
        `token_level_rewards` and `kl_in_reward` build them (an empty row's
        score, wrapped to column T − 1, does enter its own Â, as in veRL).
      values_bt: V, [B, T], the critic's output at every column; entries
        past column L are ignored.
      mask_bt: [B, T] response mask, each row a prefix of length L.
      gamma: γ.
      lam: λ.

    Returns:
      (Â, R), float32 [B, T] each.
    """
    m_bt = _bool(mask_bt)
    # Rewards as given (veRL's scan never reads the mask); values as veRL's
    # critic hands them over: zero past V_L, whatever the critic output there.
    r_bt = _f32(rewards_bt)
    v_bt = jnp.where(critic_mask(m_bt), _f32(values_bt), 0.0)
    next_v_bt = jnp.concatenate([v_bt[:, 1:], jnp.zeros_like(v_bt[:, :1])], axis=1)
    delta_bt = r_bt + gamma * next_v_bt - v_bt

    def step(adv_next_b, delta_b):
        adv_b = delta_b + gamma * lam * adv_next_b
        return adv_b, adv_b

    # Scan over time: move t to the leading axis, run from the last column.
    _, adv_tb = jax.lax.scan(
        step, jnp.zeros_like(delta_bt[:, 0]), delta_bt.T, reverse=True
    )
    adv_bt = adv_tb.T
    returns_bt = adv_bt + v_bt
    return masked_whiten(adv_bt, m_bt), returns_bt


# ---------------------------------------------------------------- value loss
def value_loss(
    vpreds_bt: jax.Array,
    returns_bt: jax.Array,
    old_values_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    cliprange_value: float,
    agg: str = "token-mean",
    num_tokens: jax.Array | None = None,
    num_seqs: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The clipped value loss ½·agg(max((V − R)², (V_clip − R)²)).

    V_clip = clip(V, V_old − ε_v, V_old + ε_v): as in the policy loss, the max
    keeps the pessimistic branch, so a step that moves V beyond the clip
    range towards R gains nothing and one away from R is not softened.

    veRL's critic (dp_critic.update_critic) calls compute_value_loss with
    the shifted `critic_mask` and reduces with masked_mean, a token mean over
    the micro-batch, then divides by the number of micro-batches: agg
    "token-mean" with num_tokens None, per micro-batch, is exactly that (the
    micro-batch losses are then averaged, not token-weighted). Passing the
    mini-batch's token count as num_tokens instead gives the token mean over
    the whole mini-batch, summed over micro-batches. The other `agg` modes of
    `rlvr_jax.learner.loss.aggregate` are available but are not veRL's.

    Args:
      vpreds_bt: V, the critic being trained, [B, T] (differentiable).
      returns_bt: R, [B, T] (a constant).
      old_values_bt: V_old, the critic's values when R was computed, [B, T].
      mask_bt: [B, T]; veRL uses `critic_mask(response_mask)`.
      cliprange_value: ε_v.
      agg: aggregation mode (`rlvr_jax.learner.loss.AGG_MODES`).
      num_tokens, num_seqs: mini-batch normalisers for micro-batches.

    Returns:
      (loss, clipfrac): clipfrac is the token mean of [clipped error >
      unclipped error] (veRL's critic/vf_clipfrac), normalised like a
      token-mean loss.
    """
    m_bt = _bool(mask_bt)
    # Zero padding first so garbage there cannot reach the loss or its grads.
    v_bt = jnp.where(m_bt, _f32(vpreds_bt), 0.0)
    r_bt = jnp.where(m_bt, jax.lax.stop_gradient(_f32(returns_bt)), 0.0)
    old_bt = jnp.where(m_bt, jax.lax.stop_gradient(_f32(old_values_bt)), 0.0)
    v_clip_bt = jnp.clip(v_bt, old_bt - cliprange_value, old_bt + cliprange_value)
    err_bt = jnp.square(v_bt - r_bt)
    err_clip_bt = jnp.square(v_clip_bt - r_bt)
    loss = 0.5 * loss_lib.aggregate(
        jnp.maximum(err_bt, err_clip_bt),
        m_bt,
        agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
    )
    clipfrac = loss_lib.aggregate(
        (err_clip_bt > err_bt).astype(jnp.float32),
        m_bt,
        "token-mean",
        num_tokens=num_tokens,
    )
    return loss, clipfrac


def explained_variance(
    returns_bt: jax.Array, values_bt: jax.Array, mask_bt: jax.Array
) -> jax.Array:
    """1 − Var(R − V) / (Var(R) + 1e-5) over the masked tokens.

    veRL's 'critic/vf_explained_var': unbiased variances (torch.var) of the
    response tokens (the unshifted response mask). A perfect critic scores 1;
    a constant one scores 1e-5 / (Var(R) + 1e-5), just above 0 because of the
    floor; one worse than a constant scores below 0.
    """
    r_bt = _f32(returns_bt)
    residual_bt = r_bt - _f32(values_bt)
    return 1.0 - masked_var(residual_bt, mask_bt) / (
        masked_var(r_bt, mask_bt) + EXPLAINED_VAR_EPS
    )

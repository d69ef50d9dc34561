"""PPO critic math (rlvr_jax.learner.gae) against the independent numpy oracle
(tests/ppo_oracle.py) on random ragged batches, and against hand-computed
values on tiny ones."""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.learner import gae
from tests import ppo_oracle as oracle

KINDS = tuple(gae.KL_IN_REWARD_KINDS)
CLIP_V = 0.5  # veRL's critic.cliprange_value

# The functions as the learner will call them: jitted (on CPU one compile per
# shape is also far cheaper than op-by-op dispatch of an eager call).
J = types.SimpleNamespace(
    token_level_rewards=jax.jit(gae.token_level_rewards),
    kl_in_reward=jax.jit(gae.kl_in_reward, static_argnames="kind"),
    masked_mean=jax.jit(gae.masked_mean, static_argnames="axis"),
    masked_var=jax.jit(gae.masked_var),
    masked_whiten=jax.jit(gae.masked_whiten, static_argnames="shift_mean"),
    critic_mask=jax.jit(gae.critic_mask),
    gae_advantages_and_returns=jax.jit(gae.gae_advantages_and_returns),
    value_loss=jax.jit(gae.value_loss, static_argnames="agg"),
    explained_variance=jax.jit(gae.explained_variance),
)


# ------------------------------------------------------------ random batches
def _random_batch(seed: int, num_rows: int, num_cols: int) -> dict[str, np.ndarray]:
    """fp32 inputs with ragged prefix masks: row 0 has one token, row 1 all
    of them; padding holds large garbage that must not matter."""
    rng = np.random.default_rng(seed)
    len_b = rng.integers(1, num_cols + 1, num_rows)
    len_b[0] = 1
    len_b[min(1, num_rows - 1)] = num_cols
    mask_bt = np.arange(num_cols)[None, :] < len_b[:, None]
    keep_bt = oracle.critic_mask(mask_bt)

    def normal(scale, valid_bt):
        x = scale * rng.standard_normal((num_rows, num_cols))
        x = np.where(valid_bt, x, 100.0 * rng.standard_normal(x.shape))
        return x.astype(np.float32)

    return dict(
        mask=mask_bt,
        scores=rng.integers(0, 2, num_rows).astype(np.float32),
        logp=-np.abs(normal(2.0, mask_bt)),
        ref_logp=-np.abs(normal(2.0, mask_bt)),
        values=normal(1.0, keep_bt),
        vpreds=normal(1.0, keep_bt),
    )


@jax.jit
def _jax_pipeline(batch, gamma, lam, coef, kind_index):
    """The whole critic-side path in one program (one compile per shape):
    the KL-in-reward of every kind, then GAE on the rewards of kind
    KINDS[kind_index]."""
    mask_bt = batch["mask"]
    scores_bt = gae.token_level_rewards(batch["scores"], mask_bt)
    out = dict(scores=scores_bt)
    rewards_kbt = []
    for kind in KINDS:
        rewards_bt, out[f"kl_{kind}"] = gae.kl_in_reward(
            scores_bt, batch["logp"], batch["ref_logp"], mask_bt, coef, kind
        )
        out[f"rewards_{kind}"] = rewards_bt
        rewards_kbt.append(rewards_bt)
    rewards_bt = jnp.stack(rewards_kbt)[kind_index]
    adv_bt, ret_bt = gae.gae_advantages_and_returns(
        rewards_bt, batch["values"], mask_bt, gamma, lam
    )
    keep_bt = gae.critic_mask(mask_bt)
    # The critic's inputs as veRL stores them: values zeroed outside its mask.
    old_bt = jnp.where(keep_bt, batch["values"], 0.0)
    vf_loss, vf_clipfrac = gae.value_loss(
        batch["vpreds"], ret_bt, old_bt, keep_bt, cliprange_value=CLIP_V
    )
    return out | dict(
        adv=adv_bt,
        ret=ret_bt,
        vf_loss=vf_loss,
        vf_clipfrac=vf_clipfrac,
        ev=gae.explained_variance(ret_bt, old_bt, mask_bt),
        white_noshift=gae.masked_whiten(batch["logp"], mask_bt, shift_mean=False),
    )


def _oracle_pipeline(batch, gamma, lam, coef, kind_index):
    b64 = {k: np.asarray(v, np.float64) for k, v in batch.items()}
    mask_bt = batch["mask"]
    keep_bt = oracle.critic_mask(mask_bt)
    scores_bt = oracle.token_level_rewards(b64["scores"], mask_bt)
    out = dict(scores=scores_bt)
    for kind in KINDS:
        out[f"rewards_{kind}"], out[f"kl_{kind}"] = oracle.kl_in_reward(
            scores_bt, b64["logp"], b64["ref_logp"], mask_bt, coef, kind
        )
    rewards_bt = out[f"rewards_{KINDS[kind_index]}"]
    adv_bt, ret_bt = oracle.gae(rewards_bt, b64["values"], mask_bt, gamma, lam)
    old_bt = np.where(keep_bt, b64["values"], 0.0)
    vf_loss, vf_clipfrac = oracle.value_loss(
        b64["vpreds"], ret_bt, old_bt, keep_bt, CLIP_V
    )
    return out | dict(
        adv=adv_bt,
        ret=ret_bt,
        vf_loss=vf_loss,
        vf_clipfrac=vf_clipfrac,
        ev=oracle.explained_variance(ret_bt, old_bt, mask_bt),
        white_noshift=oracle.masked_whiten(b64["logp"], mask_bt, shift_mean=False),
    )


def test_pipeline_matches_oracle_on_ragged_batches():
    # One shape (one compile); the seeds vary the ragged lengths in 1..17.
    for seed in range(4):
        batch = _random_batch(seed, 8, 17)
        for gamma, lam in ((1.0, 1.0), (0.99, 0.95)):
            # Every kind feeds GAE once per shape; β large enough to matter.
            kind_index, coef = seed % len(KINDS), (0.1, 0.001)[seed % 2]
            got = _jax_pipeline(batch, gamma, lam, coef, kind_index)
            want = _oracle_pipeline(batch, gamma, lam, coef, kind_index)
            for key, want_x in want.items():
                got_x = np.asarray(got[key], np.float64)
                assert got[key].dtype == jnp.float32, key
                # ≤ 1e-6, relative where the values exceed 1.
                err = np.abs(got_x - want_x) / np.maximum(1.0, np.abs(want_x))
                assert np.max(err) <= 1e-6, (key, seed, gamma, lam, np.max(err))


# ------------------------------------------------------------ hand-computed
def test_token_level_rewards_at_last_valid_token():
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)
    got = J.token_level_rewards(jnp.array([1.0, 0.5, 2.0, 3.0]), mask)
    # The empty row's index L − 1 = −1 wraps to the last column, as in veRL.
    want = [[0, 1, 0], [0, 0, 0.5], [2, 0, 0], [0, 0, 3]]
    np.testing.assert_array_equal(np.asarray(got), want)


def test_kl_in_reward_by_hand():
    mask = np.array([[1, 1, 0]], bool)
    logp = jnp.array([[-1.0, -2.0, 9.0]])  # the 9 is padding
    ref = jnp.array([[-1.5, -1.0, 0.0]])
    rewards = jnp.array([[0.0, 1.0, 0.0]])
    # kl: diff = logp − ref = [0.5, −1]; r − 0.1·diff = [−0.05, 1.1]; padding 0.
    got, kl = J.kl_in_reward(rewards, logp, ref, mask, 0.1, "kl")
    np.testing.assert_allclose(np.asarray(got), [[-0.05, 1.1, 0.0]], rtol=1e-6)
    assert float(kl) == pytest.approx(-0.25)  # one row: (0.5 − 1) / 2
    # abs: [0.5, 1]; mse: ½·[0.25, 1]; low_var_kl, x = ref − logp = [−0.5, 1]:
    # e^x − x − 1 = [e^−½ − ½, e − 2].
    for kind, kl_t in (
        ("abs", [0.5, 1.0]),
        ("mse", [0.125, 0.5]),
        ("low_var_kl", [math.exp(-0.5) - 0.5, math.e - 2.0]),
    ):
        got, kl = J.kl_in_reward(rewards, logp, ref, mask, 0.1, kind)
        want = [0.0 - 0.1 * kl_t[0], 1.0 - 0.1 * kl_t[1], 0.0]
        np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-6)
        assert float(kl) == pytest.approx(sum(kl_t) / 2, rel=1e-6)


def test_low_var_kl_is_clamped_at_ten_and_unknown_kinds_raise():
    # x = ref − logp = 30: e^30 − 31 → clamped to 10; finite, no overflow.
    got, _ = J.kl_in_reward(
        jnp.zeros((1, 1)),
        jnp.array([[-30.0]]),
        jnp.zeros((1, 1)),
        [[1]],
        1.0,
        "low_var_kl",
    )
    assert float(got[0, 0]) == -10.0
    for kind in ("full", "k1", "k3"):
        with pytest.raises(NotImplementedError):
            J.kl_in_reward(
                jnp.zeros((1, 1)),
                jnp.zeros((1, 1)),
                jnp.zeros((1, 1)),
                [[1]],
                1.0,
                kind,
            )


def test_masked_moments_unbiased_and_whiten_by_hand():
    x = jnp.array([[1.0, 2.0, 50.0], [3.0, 4.0, -7.0]])
    mask = np.array([[1, 1, 0], [1, 1, 0]])
    # Valid 1..4: mean 2.5, squared deviations 2.25+0.25+0.25+2.25 = 5,
    # unbiased variance 5 / 3 (not 5 / 4).
    assert float(J.masked_mean(x, mask)) == 2.5
    assert float(J.masked_var(x, mask)) == pytest.approx(5 / 3, rel=1e-7)
    np.testing.assert_allclose(np.asarray(J.masked_mean(x, mask, axis=-1)), [1.5, 3.5])
    scale = 1 / math.sqrt(5 / 3 + 1e-8)
    white = np.asarray(J.masked_whiten(x, mask))
    # Padding is transformed too: (50 − 2.5)·scale, not 0.
    np.testing.assert_allclose(
        white, (np.array([[1, 2, 50], [3, 4, -7]]) - 2.5) * scale, rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(J.masked_whiten(x, mask, shift_mean=False)), white + 2.5, rtol=1e-6
    )
    # One valid entry: veRL raises; under jit this gives NaN.
    assert math.isnan(float(J.masked_var(x, np.array([[1, 0, 0], [0, 0, 0]]))))


def test_critic_mask_is_the_response_mask_shifted_right():
    mask = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    want = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    np.testing.assert_array_equal(np.asarray(J.critic_mask(mask)), want)


def test_gae_one_row_three_tokens_by_hand():
    # r = [0, 0, 1] (the score at the last token), V = [0.5, 0.25, 0.5],
    # a full row, so V after the end is 0. γ = λ = 0.5, γλ = 0.25:
    #   δ_2 = 1 + 0.5·0    − 0.5  =  0.5      Â_2 = 0.5
    #   δ_1 = 0 + 0.5·0.5  − 0.25 =  0        Â_1 = 0 + 0.25·0.5     = 0.125
    #   δ_0 = 0 + 0.5·0.25 − 0.5  = −0.375    Â_0 = −0.375 + 0.25·0.125 = −0.34375
    #   R = Â + V = [0.15625, 0.375, 1.0]
    # Whitening: mean Â = 0.28125 / 3 = 0.09375; deviations
    # [−0.4375, 0.03125, 0.40625], squares sum to 0.357421875, unbiased
    # variance 0.357421875 / 2 = 0.1787109375.
    rewards = jnp.array([[0.0, 0.0, 1.0]])
    values = jnp.array([[0.5, 0.25, 0.5]])
    mask = np.ones((1, 3), bool)
    adv, ret = J.gae_advantages_and_returns(rewards, values, mask, 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(ret), [[0.15625, 0.375, 1.0]], rtol=1e-7)
    dev = np.array([-0.4375, 0.03125, 0.40625])
    np.testing.assert_allclose(
        np.asarray(adv)[0], dev / math.sqrt(0.1787109375 + 1e-8), rtol=1e-6
    )
    # γ = λ = 1 (veRL's default): Â_t = Σ r − V_t = [0.5, 0.75, 0.5], R = 1.
    adv, ret = J.gae_advantages_and_returns(rewards, values, mask, 1.0, 1.0)
    np.testing.assert_allclose(np.asarray(ret), [[1.0, 1.0, 1.0]], rtol=1e-7)
    # mean 0.5833..., deviations [−1/12, 1/6, −1/12], unbiased var 1/48.
    dev = np.array([-1 / 12, 1 / 6, -1 / 12])
    np.testing.assert_allclose(
        np.asarray(adv)[0], dev / math.sqrt(1 / 48 + 1e-8), rtol=1e-5
    )


def test_gae_bootstraps_from_the_value_after_the_last_token():
    # The same row padded to T = 4 (L = 3). veRL keeps V_3 = 0.8 (the critic's
    # value after the last token, inside its shifted mask); 99 is past it.
    #   Â_3 = 0 + 0.5·0 − 0.8 = −0.8               (R_3 = 0: the critic's target)
    #   δ_2 = 1 + 0.5·0.8 − 0.5 = 0.9,  Â_2 = 0.9 − 0.25·0.8 = 0.7
    #        (= 0.5 + γ(1 − λ)·V_3 = 0.5 + 0.2)
    #   Â_1 = 0 + 0.25·0.7 = 0.175,     Â_0 = −0.375 + 0.25·0.175 = −0.33125
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.0]])
    values = jnp.array([[0.5, 0.25, 0.5, 0.8]])
    mask = np.array([[1, 1, 1, 0]], bool)
    _, ret = J.gae_advantages_and_returns(rewards, values, mask, 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(ret), [[0.16875, 0.425, 1.2, 0.0]], rtol=1e-6)
    # λ = 1: V_3 cancels, and values past it (99) never count.
    padded = jnp.array([[0.5, 0.25, 0.5, 0.8, 99.0]])
    _, ret1 = J.gae_advantages_and_returns(
        jnp.array([[0.0, 0.0, 1.0, 0.0, 0.0]]),
        padded,
        np.array([[1, 1, 1, 0, 0]]),
        0.5,
        1.0,
    )
    _, ret_full = J.gae_advantages_and_returns(
        rewards[:, :3], values[:, :3], mask[:, :3], 0.5, 1.0
    )
    np.testing.assert_allclose(np.asarray(ret1)[:, :3], np.asarray(ret_full), rtol=1e-6)


def test_value_loss_clip_active_and_inactive():
    returns = jnp.array([[1.0, 1.0, 1.0, 5.0]])
    old = jnp.zeros((1, 4))
    vpreds = jnp.array([[0.2, 1.0, -1.0, 3.0]])
    mask = np.array([[1, 1, 1, 0]])
    # ε_v = 0.5: V_clip = [0.2, 0.5, −0.5].
    #   token 0: inside the range, errors 0.64 and 0.64 → 0.64, not clipped
    #   token 1: moved past the range towards R: 0 vs 0.25 → 0.25, clipped
    #   token 2: moved past it away from R: 4 vs 2.25 → 4, not clipped
    # loss = ½ (0.64 + 0.25 + 4) / 3; clipfrac 1/3.
    loss, clipfrac = J.value_loss(vpreds, returns, old, mask, cliprange_value=0.5)
    assert float(loss) == pytest.approx(0.5 * 4.89 / 3, rel=1e-6)
    assert float(clipfrac) == pytest.approx(1 / 3, rel=1e-6)
    # ε_v = 10: never clipped, ½ (0.64 + 0 + 4) / 3.
    loss, clipfrac = J.value_loss(vpreds, returns, old, mask, cliprange_value=10.0)
    assert float(loss) == pytest.approx(0.5 * 4.64 / 3, rel=1e-6)
    assert float(clipfrac) == 0.0
    # Micro-batch form: the mini-batch's 6 tokens as normaliser.
    loss, clipfrac = J.value_loss(
        vpreds, returns, old, mask, cliprange_value=0.5, num_tokens=jnp.array(6)
    )
    assert float(loss) == pytest.approx(0.5 * 4.89 / 6, rel=1e-6)
    assert float(clipfrac) == pytest.approx(1 / 6, rel=1e-6)


def test_value_loss_gradient_skips_the_clipped_branch():
    # Token 1 above: the clipped error wins and is constant in V → zero gradient.
    grad = jax.grad(
        lambda v: J.value_loss(
            v, jnp.ones((1, 2)), jnp.zeros((1, 2)), np.ones((1, 2)), cliprange_value=0.5
        )[0]
    )(jnp.array([[0.2, 1.0]]))
    # d/dV ½·mean((V − R)²) = (V − R) / 2 for token 0.
    np.testing.assert_allclose(np.asarray(grad), [[-0.4, 0.0]], rtol=1e-6)


def test_explained_variance_perfect_constant_and_worse():
    returns = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 1], [1, 0, 0]])
    # Var(R) over 1..4, unbiased: 5/3.
    assert float(J.explained_variance(returns, returns, mask)) == 1.0
    const = J.explained_variance(returns, jnp.full((2, 3), 2.5), mask)
    # Var(R − c) = Var(R): 1 − v/(v + 1e-5) = 1e-5/(v + 1e-5) ≈ 6e-6, ≈ 0.
    assert float(const) == pytest.approx(1e-5 / (5 / 3 + 1e-5), abs=1e-7)
    assert 0.0 <= float(const) <= 1e-5
    # A critic anti-correlated with R is worse than a constant: < 0.
    worse = J.explained_variance(returns, 5.0 - returns, mask)
    assert float(worse) < 0.0

"""GRPO math against hand-computed values: advantages, log-probs, loss, KL, agg."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import grpo
from rlvr_jax.model import decoder as M
from tests.learner_fixtures import CONFIG, VOCAB, fast_jit, random_params

LN = math.log


# ----------------------------------------------------------------- advantages
def test_advantages_per_group_unbiased_std():
    rewards = [1, 0, 0, 0, 1, 1, 0, 0]
    got = np.asarray(grpo.advantages(rewards, 4))
    # Group 1: mean 1/4, unbiased var (0.75² + 3·0.25²)/3 = 1/4, std 1/2.
    # Group 2: mean 1/2, unbiased var 4·0.25/3 = 1/3, std 1/√3.
    g1 = np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)
    g2 = np.array([0.5, 0.5, -0.5, -0.5]) / (1 / math.sqrt(3) + 1e-6)
    np.testing.assert_allclose(got, np.concatenate([g1, g2]), rtol=1e-6)
    assert got.dtype == np.float32


def test_advantages_all_equal_groups_are_exactly_zero():
    rewards = [1, 1, 1, 0, 0, 0, 0.1, 0.1, 0.1, 0.7, 0.7, 0.7]
    got = np.asarray(grpo.advantages(rewards, 3))
    assert np.all(got == 0.0)


def test_advantages_group_of_one_uses_mean_zero_std_one():
    got = np.asarray(grpo.advantages([1.0, 0.0, 0.5], 1))
    np.testing.assert_allclose(got, [1 / (1 + 1e-6), 0.0, 0.5 / (1 + 1e-6)], rtol=1e-7)
    got = np.asarray(grpo.advantages([1.0, 0.0], 1, norm_by_std=False))
    np.testing.assert_array_equal(got, [1.0, 0.0])


def test_advantages_without_std_normalisation():
    got = np.asarray(grpo.advantages([1, 0, 0, 0], 4, norm_by_std=False))
    np.testing.assert_allclose(got, [0.75, -0.25, -0.25, -0.25], rtol=1e-7)


def test_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError):
        grpo.advantages([1, 0, 1], 2)


# ------------------------------------------------------ log-probs and entropy
def test_logprobs_and_entropy_at_temperature():
    tau = 0.5
    # logits / τ = [0, ln 2, ln 3] → p = [1/6, 2/6, 3/6].
    logits = jnp.array([[[0.0, tau * LN(2), tau * LN(3)]] * 2])
    targets = jnp.array([[2, 0]])
    logp, ent = grpo.logprobs_from_logits(logits, targets, tau)
    np.testing.assert_allclose(np.asarray(logp), [[LN(1 / 2), LN(1 / 6)]], rtol=1e-6)
    h = -(1 / 6 * LN(1 / 6) + 2 / 6 * LN(2 / 6) + 3 / 6 * LN(3 / 6))
    np.testing.assert_allclose(np.asarray(ent), [[h, h]], rtol=1e-6)


def test_logprobs_upcast_bf16_logits_to_fp32():
    logits = jnp.array([[[1.0, 2.0, 3.0]]], jnp.bfloat16)
    logp, ent = grpo.logprobs_from_logits(logits, jnp.array([[0]]), 1.0)
    assert logp.dtype == ent.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(logp)[0, 0], 1 - np.log(np.exp([1, 2, 3]).sum()), rtol=1e-6
    )


# ------------------------------------------------------------ clipped loss
def _pg_only(logp, old, adv, mask=None, **kw):
    logp = jnp.asarray(logp, jnp.float32)
    mask = jnp.ones(logp.shape, bool) if mask is None else mask
    kw = dict(dict(clip_eps=0.2, kl_coef=0.0, entropy_coef=0.0, pg_coef=1.0), **kw)
    kw.setdefault("agg", "token-mean")
    return grpo.policy_loss(
        logp,
        jnp.asarray(old, jnp.float32),
        None,
        jnp.asarray(adv),
        mask,
        jnp.zeros(logp.shape),
        **kw,
    )


def test_clip_both_sides_both_signs():
    # Tokens: (Â, ρ) = (+1, 1.5) clipped at 1.2; (+1, 0.5) unclipped;
    #         (−1, 0.5) clipped at 0.8; (−1, 1.5) unclipped.
    ratios = np.array([1.5, 0.5, 0.5, 1.5])
    old = np.full((1, 4), -2.0)
    logp = old + np.log(ratios)
    adv = np.array([[1.0, 1.0, -1.0, -1.0]])
    loss_fn = lambda lp: _pg_only(lp, old, adv)[0]
    loss, metrics = _pg_only(logp, old, adv)
    per_token = np.array([-1.2, -0.5, 0.8, 1.5])
    np.testing.assert_allclose(float(loss), per_token.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["pg_loss"]), per_token.mean(), rtol=1e-6)
    # d/dlogp of −Â ρ is −Â ρ where unclipped, 0 where clipped; ÷ 4 tokens.
    grad = np.asarray(jax.grad(loss_fn)(jnp.asarray(logp, jnp.float32)))
    np.testing.assert_allclose(grad, [[0.0, -0.5 / 4, 0.0, 1.5 / 4]], rtol=1e-6)
    assert float(metrics["clip_frac"]) == 0.5
    ppo_kl = np.mean(-np.log(ratios))
    np.testing.assert_allclose(float(metrics["ppo_kl"]), ppo_kl, rtol=1e-6)


def test_asymmetric_clip_high():
    old = np.zeros((1, 2))
    logp = np.log([[1.25, 1.5]])
    adv = np.ones((1, 2))
    sym, _ = _pg_only(logp, old, adv)
    np.testing.assert_allclose(float(sym), (-1.2 - 1.2) / 2, rtol=1e-6)
    high, m = _pg_only(logp, old, adv, clip_eps_high=0.28)
    np.testing.assert_allclose(float(high), (-1.25 - 1.28) / 2, rtol=1e-6)
    assert float(m["clip_frac"]) == 0.5
    # ε_low still governs negative advantages.
    low, _ = _pg_only(np.log([[0.5]]), [[0.0]], [[-1.0]], clip_eps_high=0.28)
    np.testing.assert_allclose(float(low), 0.8, rtol=1e-6)


def test_on_policy_ratio_is_one_and_nothing_clips():
    logp = jnp.array([[-1.0, -3.0, -0.2]])
    adv = jnp.array([2.0])  # [B] broadcasts over tokens
    loss_fn = lambda lp: _pg_only(lp, jax.lax.stop_gradient(lp), adv)
    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(logp)
    assert float(metrics["clip_frac"]) == 0.0
    assert float(metrics["ppo_kl"]) == 0.0
    np.testing.assert_allclose(float(loss), -2.0, rtol=1e-7)
    # REINFORCE with baseline: ∇ −(1/N) Σ Â logp = −Â / N per token.
    np.testing.assert_allclose(np.asarray(grad), [[-2 / 3] * 3], rtol=1e-6)


def test_masked_garbage_cannot_poison_loss_or_grad():
    logp = jnp.array([[-1.0, -2.0]])
    old = jnp.array([[-1.0, jnp.inf]])
    ref = jnp.array([[-1.5, -jnp.inf]])
    mask = jnp.array([[True, False]])
    fn = lambda lp: grpo.policy_loss(
        lp,
        old,
        ref,
        jnp.array([[1.0, jnp.nan]]),
        mask,
        jnp.array([[0.5, jnp.nan]]),
        clip_eps=0.2,
        kl_coef=0.1,
        entropy_coef=0.1,
        pg_coef=1.0,
        agg="token-mean",
    )[0]
    loss, grad = jax.value_and_grad(fn)(logp)
    # pg −1, entropy 0.5, k3 with x = −0.5: e^−0.5 − 0.5.
    want = -1.0 - 0.1 * 0.5 + 0.1 * (math.exp(-0.5) - 0.5)
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad)))
    assert float(grad[0, 1]) == 0.0


# ---------------------------------------------------------------------- KL
@pytest.mark.parametrize(
    "kl_type, want",
    [
        ("k1", [1.0, -1.0]),
        ("abs", [1.0, 1.0]),
        ("mse", [0.5, 0.5]),
        # x = ref − logp = [−1, 1]: e^x − x − 1 = [e⁻¹, e − 2].
        ("low_var_kl", [math.exp(-1), math.e - 2]),
    ],
)
def test_kl_estimators(kl_type, want):
    logp = jnp.array([[-1.0, -2.0]])
    ref = jnp.array([[-2.0, -1.0]])
    np.testing.assert_allclose(
        np.asarray(grpo.kl_penalty(logp, ref, kl_type)), [want], rtol=1e-6
    )


def test_low_var_kl_clamps_to_ten_with_finite_zero_gradient():
    # x = 5: e^5 − 6 ≈ 142.4; x = −15: 14 (+e^−15); x = 200 would overflow e^x.
    ref = jnp.array([[0.0, 0.0, 0.0, 0.0]])
    logp = jnp.array([[-5.0, 15.0, -200.0, 1.0]])
    kl = grpo.kl_penalty(logp, ref, "low_var_kl")
    np.testing.assert_allclose(
        np.asarray(kl), [[10.0, 10.0, 10.0, math.exp(-1)]], rtol=1e-6
    )
    grad = jax.grad(lambda lp: grpo.kl_penalty(lp, ref, "low_var_kl").sum())(logp)
    # d/dlogp (e^x − x − 1) = 1 − e^x; zero where clamped.
    np.testing.assert_allclose(
        np.asarray(grad), [[0.0, 0.0, 0.0, 1 - math.exp(-1)]], rtol=1e-6
    )


# -------------------------------------------------------------- aggregation
X = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)  # third row: padding


@pytest.mark.parametrize(
    "agg, want",
    [
        ("token-mean", (1 + 2 + 4) / 3),
        ("seq-mean-token-mean", ((1 + 2) / 2 + 4 / 1) / 2),
        ("seq-mean-token-sum", ((1 + 2) + 4) / 2),
    ],
)
def test_aggregation_modes_with_ragged_masks(agg, want):
    np.testing.assert_allclose(float(grpo.aggregate(X, MASK, agg)), want, rtol=1e-7)


@pytest.mark.parametrize(
    "agg, want",
    [
        ("token-mean", (1 + 2 + 4) / 10),
        ("seq-mean-token-mean", ((1 + 2) / 2 + 4 / 1) / 5),
        ("seq-mean-token-sum", ((1 + 2) + 4) / 5),
    ],
)
def test_aggregation_with_global_normalisers(agg, want):
    got = grpo.aggregate(X, MASK, agg, num_tokens=10, num_seqs=5)
    np.testing.assert_allclose(float(got), want, rtol=1e-7)


def test_empty_mask_aggregates_to_zero_not_nan():
    for agg in grpo.AGG_MODES:
        assert float(grpo.aggregate(X, jnp.zeros_like(MASK), agg)) == 0.0


def test_full_loss_combines_terms_with_coefficients():
    # Two rows, ragged: row 0 has 2 tokens, row 1 has 1. On-policy (ρ = 1).
    logp = jnp.array([[-1.0, -2.0], [-0.5, -9.0]])
    ref = jnp.array([[-2.0, -1.0], [-0.5, 0.0]])
    adv = jnp.array([1.0, -2.0])
    ent = jnp.array([[0.3, 0.6], [0.9, 7.0]])
    mask = jnp.array([[1, 1], [1, 0]], bool)
    kl_tok = [math.exp(-1), math.e - 2, 0.0]  # k3 at x = −1, 1, 0
    cases = {
        "token-mean": dict(
            pg=(-1 - 1 + 2) / 3, ent=(0.3 + 0.6 + 0.9) / 3, kl=sum(kl_tok) / 3
        ),
        "seq-mean-token-mean": dict(
            pg=((-1 - 1) / 2 + 2) / 2,
            ent=((0.3 + 0.6) / 2 + 0.9) / 2,
            kl=((kl_tok[0] + kl_tok[1]) / 2 + kl_tok[2]) / 2,
        ),
        "seq-mean-token-sum": dict(
            pg=((-1 - 1) + 2) / 2, ent=((0.3 + 0.6) + 0.9) / 2, kl=sum(kl_tok) / 2
        ),
    }
    for agg, want in cases.items():
        for pg_coef in (1.0, 0.0):
            loss, m = grpo.policy_loss(
                logp,
                logp,
                ref,
                adv,
                mask,
                ent,
                clip_eps=0.2,
                kl_coef=0.01,
                entropy_coef=0.1,
                pg_coef=pg_coef,
                agg=agg,
            )
            expect = pg_coef * want["pg"] - 0.1 * want["ent"] + 0.01 * want["kl"]
            np.testing.assert_allclose(float(loss), expect, rtol=1e-6, atol=1e-7)
            for key, name in (("pg", "pg_loss"), ("ent", "entropy"), ("kl", "kl")):
                np.testing.assert_allclose(
                    float(m[name]), want[key], rtol=1e-6, atol=1e-7
                )


def test_kl_needs_ref_logp():
    with pytest.raises(ValueError):
        _pg_only([[0.0]], [[0.0]], [[1.0]], kl_coef=0.1)


# ------------------------------------------- gradient vs finite differences
def test_loss_gradient_wrt_logits_matches_finite_differences():
    params = random_params(CONFIG, seed=3)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (2, 6))
    logits32 = fast_jit(M.forward, static_argnums=0)(CONFIG, params, tokens)
    with jax.enable_x64(True):
        logits = jnp.asarray(logits32, jnp.float64) * 3.0  # sharper than init
        targets = jnp.asarray(np.roll(tokens, -1, axis=1))
        mask = jnp.array([[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]], bool)
        lp0, _ = grpo.logprobs_from_logits(logits, targets, 0.6)
        # Old/ref log-probs away from ρ's clip kinks: some clipped, some not.
        old = lp0 + jnp.asarray(rng.choice([-0.5, -0.05, 0.05, 0.5], (2, 6)))
        ref = lp0 + jnp.asarray(rng.normal(0, 0.5, (2, 6)))
        adv = jnp.array([1.3, -0.7])

        def f(z):
            lp, ent = grpo.logprobs_from_logits(z, targets, 0.6)
            return grpo.policy_loss(
                lp,
                old,
                ref,
                adv,
                mask,
                ent,
                clip_eps=0.2,
                kl_coef=0.1,
                entropy_coef=0.05,
                pg_coef=1.0,
                agg="seq-mean-token-mean",
            )[0]

        @jax.jit
        def grad_and_fd(z, h):
            basis = jnp.eye(z.size, dtype=z.dtype).reshape(-1, *z.shape)
            f_all = jax.vmap(f)
            fd = (f_all(z + h * basis) - f_all(z - h * basis)) / (2 * h)
            return jax.grad(f)(z), fd.reshape(z.shape)

        grad, fd = map(np.asarray, grad_and_fd(logits, 1e-6))
    assert grad.dtype == np.float64
    assert np.abs(grad).max() > 1e-3  # the check has something to compare
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)

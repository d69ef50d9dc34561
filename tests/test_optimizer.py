"""AdamW + clipping against torch.optim.AdamW, the lr schedule and its quirk."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from rlvr_jax.learner import optimizer


@pytest.mark.parametrize(
    "warmup, quirk, want",
    [
        (0, False, [1.0, 1.0, 1.0]),
        (0, True, [0.0, 1.0, 1.0]),  # veRL: min(1, s / max(1, 0))
        (4, False, [0.25, 0.5, 0.75, 1.0, 1.0]),
        (4, True, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]),
    ],
)
def test_schedule(warmup, quirk, want):
    fn = optimizer.schedule(2.0, warmup, quirk)
    got = [float(fn(s)) for s in range(len(want))]
    np.testing.assert_allclose(got, 2.0 * np.array(want), rtol=1e-7)


def test_cosine_decay_multiplies_the_warmup_and_ends_at_zero():
    fn = optimizer.schedule(2.0, warmup_steps=2, decay_steps=4)
    got = [float(fn(s)) for s in range(6)]
    # warmup (s+1)/2 capped at 1, times (1 + cos(π min(s, 4) / 4)) / 2
    cosine = [1.0, (1 + np.sqrt(0.5)) / 2, 0.5, (1 - np.sqrt(0.5)) / 2, 0.0, 0.0]
    want = 2.0 * np.array([0.5, 1, 1, 1, 1, 1]) * np.array(cosine)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _tree(rng):
    return {
        "layers": {"w": rng.normal(size=(3, 4)), "q_bias": rng.normal(size=(4,))},
        "final_norm": {"scale": 1.0 + rng.normal(size=(4,))},
    }


@pytest.mark.parametrize("quirk", [False, True])
def test_adamw_with_clip_matches_torch(quirk):
    rng = np.random.default_rng(0)
    init = _tree(rng)
    # Global norms 0.94, 14.6, 0.16, 6.3: clipping to 1.0 acts on the 2nd, 4th.
    grads = [
        jax.tree.map(lambda x, s=scale: 0.3 * s * rng.normal(size=x.shape), init)
        for scale in (1.0, 10.0, 0.1, 5.0)
    ]
    lr, wd = 0.05, 0.01

    tx = optimizer.adamw(lr, weight_decay=wd, first_step_zero_lr=quirk)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), init)
    state = tx.init(params)
    ours = []
    for g in grads:
        updates, state = tx.update(
            jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, params
        )
        params = optax.apply_updates(params, updates)
        ours.append(jax.tree.map(np.asarray, params))

    leaves, treedef = jax.tree.flatten(init)
    t_params = [
        torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in leaves
    ]
    opt = torch.optim.AdamW(
        t_params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd
    )
    # The reference's scheduler: lr · min(1, s / max(1, warmup)), warmup 0.
    lam = (lambda s: min(1.0, s / 1.0)) if quirk else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    for g, want in zip(grads, ours):
        for p, gl in zip(t_params, jax.tree.leaves(g)):
            p.grad = torch.tensor(gl, dtype=torch.float64)
        torch.nn.utils.clip_grad_norm_(t_params, 1.0)
        opt.step()
        sched.step()
        ref = jax.tree.unflatten(treedef, [p.detach().numpy() for p in t_params])
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if quirk:  # the first update ran at lr 0: nothing moved
        for a, b in zip(jax.tree.leaves(ours[0]), leaves):
            np.testing.assert_allclose(a, b, rtol=1e-7)


@pytest.mark.parametrize("decay_all, norm_after", [(True, 0.999), (False, 1.0)])
def test_weight_decay_mask(decay_all, norm_after):
    params = {
        "layers": {"w": jnp.ones((2, 2)), "q_bias": jnp.ones(2)},
        "final_norm": {"scale": jnp.ones(2)},
    }
    tx = optimizer.adamw(0.1, weight_decay=0.01, decay_norms_and_biases=decay_all)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    # Zero gradient: only decoupled decay acts, θ ← θ − lr·λ·θ = 0.999.
    np.testing.assert_allclose(np.asarray(new["layers"]["w"]), 0.999, rtol=1e-7)
    np.testing.assert_allclose(
        np.asarray(new["layers"]["q_bias"]), norm_after, rtol=1e-7
    )
    np.testing.assert_allclose(
        np.asarray(new["final_norm"]["scale"]), norm_after, rtol=1e-7
    )

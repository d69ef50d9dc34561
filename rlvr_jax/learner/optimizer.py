"""The learner's optimizer: global-norm clipping then AdamW, built with optax.

The reference recipe (docs/recipe.md) is AdamW with lr 1e-6 constant, betas
(0.9, 0.999), eps 1e-8, weight decay 0.01 on every parameter and a global-norm
clip of 1.0. Its learning-rate scheduler (veRL's constant-with-warmup,
lr · min(1, s / max(1, W)) at update s) gives the very first update lr 0; that
quirk is reproduced only when asked for (`first_step_zero_lr`). A cosine
decay to zero (`decay_steps`) is there for short supervised runs (the laptop
lab's warm start), not for the paper's recipe.

The pre-clip global norm is not visible through an optax transformation, so
`step.train_step` measures it (optax.tree.norm) before calling `update`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlvr_jax.sharding import path_str


def schedule(
    lr: float,
    warmup_steps: int = 0,
    first_step_zero_lr: bool = False,
    decay_steps: int = 0,
) -> optax.Schedule:
    """Learning rate η(s) of the s-th applied update (s = 0, 1, ...).

    Without the quirk: η(s) = lr · min(1, (s + 1) / W) for W = warmup_steps > 0
    (the first update already moves), and η(s) = lr when W = 0.
    With the quirk (veRL): η(s) = lr · min(1, s / max(1, W)), so η(0) = 0.
    With D = decay_steps > 0, η(s) is further multiplied by the cosine factor
    (1 + cos(π · min(s, D) / D)) / 2: 1 at the first update, near 0 at the
    last of D updates, 0 after.
    """

    def fn(count):
        s = jnp.asarray(count, jnp.float32)
        if first_step_zero_lr:
            rate = lr * jnp.minimum(1.0, s / max(1, warmup_steps))
        elif warmup_steps > 0:
            rate = lr * jnp.minimum(1.0, (s + 1.0) / warmup_steps)
        else:
            rate = jnp.full((), lr, jnp.float32)
        if decay_steps > 0:
            done = jnp.minimum(s, decay_steps) / decay_steps
            rate = rate * 0.5 * (1.0 + jnp.cos(jnp.pi * done))
        return rate

    return fn


def decay_mask(params) -> object:
    """True for every leaf except norm scales and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(word in path_str(path) for word in ("norm", "bias")),
        params,
    )


def adamw(
    lr: float,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    warmup_steps: int = 0,
    first_step_zero_lr: bool = False,
    decay_steps: int = 0,
    decay_norms_and_biases: bool = True,
    grad_clip: float | None = 1.0,
) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) → AdamW(η(s), b1, b2, eps, weight_decay).

    Decoupled weight decay as in torch.optim.AdamW: θ ← θ − η(s)·(m̂/(√v̂+ε) + λθ).

    Args:
      lr: peak learning rate η.
      b1, b2, eps: Adam β1, β2, ε.
      weight_decay: λ.
      warmup_steps: linear warmup length W (see `schedule`).
      first_step_zero_lr: reproduce the reference's lr-0 first update.
      decay_steps: cosine decay to 0 over this many updates; 0 = none.
      decay_norms_and_biases: True applies λ to every parameter (the
        reference); False exempts RMSNorm scales and biases.
      grad_clip: maximum global gradient norm; None disables clipping.

    Returns:
      an optax GradientTransformation whose state mirrors the params (so it
      takes the params' shardings, see sharding.tree_shardings).
    """
    tx = optax.adamw(
        schedule(lr, warmup_steps, first_step_zero_lr, decay_steps),
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=None if decay_norms_and_biases else decay_mask,
    )
    if grad_clip is None:
        return tx
    return optax.chain(optax.clip_by_global_norm(grad_clip), tx)

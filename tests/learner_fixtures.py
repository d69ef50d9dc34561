"""Tiny models and synthetic GRPO batches for the learner tests."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import grpo
from rlvr_jax import sharding as S
from rlvr_jax.model import decoder as M

VOCAB = 64
# fp32 compute so gradients can be compared at 1e-6. Width 32: the fp32
# round-off of this model's gradient (against an fp64 reference) is ~1e-7;
# at width 64 with these weights it is ~1e-6, too close to the tolerance.
CONFIG = M.ModelConfig.tiny(
    dtype="float32",
    vocab_size=VOCAB,
    d_model=32,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    head_dim=16,
    mlp_dim=32,
)

# Test-only jits: XLA's CPU backend spends seconds optimising each tiny
# program; level 0 halves compile time and leaves fp32 results at round-off.
fast_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0}
)


def random_params(config=CONFIG, seed=0):
    """Random fp32 params without compiling the Flax initializer (slow on CPU)."""
    rng = np.random.default_rng(seed)

    def one(path, leaf):
        if "norm" in S.path_str(path):
            x = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        else:
            x = 0.15 * rng.normal(size=leaf.shape)
        return jnp.asarray(x, jnp.float32)

    return jax.tree_util.tree_map_with_path(one, M.abstract_params(config))


@functools.cache
def params():
    return random_params()


def make_batch(seed, prompt_lens, resp_lens, p=5, n=7, vocab=VOCAB):
    """Rows of left-padded prompts (width p) then right-padded responses (n).

    loss_mask marks the response tokens; advantages are standard normal;
    old_logp/ref_logp are zeros (see `with_old_and_ref`).
    """
    rng = np.random.default_rng(seed)
    b, t = len(prompt_lens), p + n
    tokens = np.zeros((b, t), np.int32)
    mask = np.zeros((b, t), bool)
    loss_mask = np.zeros((b, t), bool)
    for row, (pl, rl) in enumerate(zip(prompt_lens, resp_lens)):
        tokens[row, p - pl : p + rl] = rng.integers(1, vocab, pl + rl)
        mask[row, p - pl : p + rl] = True
        loss_mask[row, p : p + rl] = True
    return dict(
        tokens=tokens,
        mask=mask,
        loss_mask=loss_mask,
        advantages=rng.normal(size=b).astype(np.float32),
        old_logp=np.zeros((b, t), np.float32),
        ref_logp=np.zeros((b, t), np.float32),
    )


_logprobs = fast_jit(grpo.logprobs, static_argnums=0, static_argnames="temperature")


def with_old_and_ref(batch, params, seed=1, config=CONFIG):
    """Adds old/ref log-probs near the current ones (so some ratios clip)."""
    logp = np.asarray(_logprobs(config, params, batch, temperature=0.6))
    rng = np.random.default_rng(seed)
    old = logp + rng.choice([-0.4, -0.1, 0.1, 0.4], logp.shape)
    ref = logp + rng.normal(0, 0.3, logp.shape)
    return dict(batch, old_logp=old.astype(np.float32), ref_logp=ref.astype(np.float32))


def flat(tree):
    """All leaves of a pytree as one float64 vector."""
    return np.concatenate(
        [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
    )


def rel_err(a, b):
    """‖a − b‖ / ‖b‖ over whole pytrees."""
    a, b = flat(a), flat(b)
    return np.linalg.norm(a - b) / np.linalg.norm(b)

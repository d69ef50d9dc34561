"""rlvr_jax: reinforcement learning with verifiable rewards in pure JAX.

One decoder (`model`) is shared by a jitted sampler (`rollout`) and a sharded
GRPO learner (`learner`); a JAX-free checker scores rollouts (`reward`).
`build` turns an experiment config into the run's objects; `train` is the
loop and `plan` compiles a run for a slice before it is rented. The command
lines and the layout: README.md and docs/architecture.md.
"""

__version__ = "0.1.0"

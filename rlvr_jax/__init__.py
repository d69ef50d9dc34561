"""rlvr_jax: reinforcement learning with verifiable rewards in pure JAX.

One Flax Qwen2 model is shared by a jitted sampler and a sharded GRPO learner;
a pure-Python checker scores rollouts. See the README for the entry points.
"""

__version__ = "0.1.0"

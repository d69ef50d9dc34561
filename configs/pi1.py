"""The paper's π1 run: GRPO on one example (index 124) replicated to 128 rows.

Paper run (accelerators; ~1.5B params, 1024 responses × 3072 tokens a step;
the pool and MATH500 validation are packaged, only the weights are needed):
  python -m rlvr_jax.main --config=configs/pi1.py --workdir=/tmp/pi1 \
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
Laptop CPU (tiny random model, built-in task, a few minutes):
  python -m rlvr_jax.main --config=configs/pi1.py:tiny --workdir=/tmp/pi1_tiny
Entropy-only ablation: add --config.loss.pg_coef=0.
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (124,)  # π1
    # Memory layout, not recipe: a paged KV cache, every response of a step
    # decoded at once (1,024 slots), 1,600 pages of 128 tokens per chip, the
    # prompts prefilled 2 per chip at a time: what fits a v5e-8 beside the
    # train state (python -m rlvr_jax.plan --config=configs/pi1.py
    # --topology=v5e:2x4; docs/plan.md). `tiny` goes back to slot caches.
    c.rollout.page_size = 128
    c.rollout.pages = 1600
    c.rollout.prefill_chunk = 2
    c.rollout.chunk_size = 1024
    return base.apply_arg(c, arg)

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
    return base.apply_arg(c, arg)

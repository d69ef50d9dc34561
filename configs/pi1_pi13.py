"""The 2-example run {π1, π13}: each replicated 64× into the 128-row batch.

  python -m rlvr_jax.main --config=configs/pi1_pi13.py --workdir=/tmp/pi1_pi13 \
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (124, 682)  # π1, π13
    return base.apply_arg(c, arg)

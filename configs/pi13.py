"""π13 alone (index 682) replicated to 128 rows; otherwise the π1 recipe.

  python -m rlvr_jax.main --config=configs/pi13.py --workdir=/tmp/pi13 \
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (682,)  # π13
    return base.apply_arg(c, arg)

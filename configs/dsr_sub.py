"""The full 1,209-example DSR-sub pool (the paper's 1.2k baseline).

Shuffled with the seed, drop_last: 9 steps of 128 prompts per epoch.
  python -m rlvr_jax.main --config=configs/dsr_sub.py --workdir=/tmp/dsr_sub \
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = ()  # the whole pool
    c.data.replicate = 0  # no replication: plain epochs
    return base.apply_arg(c, arg)

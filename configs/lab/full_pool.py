"""Lab: RLVR on the whole RL pool (64 problems, 16 per domain), from the SFT model.

The lab's DSR-sub: its accuracy history ranks the examples for the 1-shot
runs (`python -m rlvr_jax.select --workdir=...`). 16 steps of 8 prompts ×
8 responses: each example is sampled twice (2 history entries).

  python -m rlvr_jax.main --config=configs/lab/full_pool.py:seed=0 \
      --workdir=/tmp/rlvr_jax_lab/full_s0
Arguments: `sft=DIR`, `data=DIR`, `tiny` (base_config.lab_config), seed=N...
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c, rest = base.lab_rl_config(arg)
    c.data.indices = base.lab_rl_pool()
    c.data.replicate = 0
    return base.apply_arg(c, rest)

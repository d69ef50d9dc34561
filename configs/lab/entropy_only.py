"""Lab: 1-shot with the entropy term only (pg_coef = 0; the paper's ablation).

  python -m rlvr_jax.main --config=configs/lab/entropy_only.py:index=I,seed=0 \
      --workdir=/tmp/rlvr_jax_lab/ent_only_s0
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.lab_one_shot_config(arg)
    c.loss.pg_coef = 0.0  # no reward signal: only the entropy bonus (and KL)
    return c

"""Lab: 1-shot without the entropy bonus (entropy_coef = 0; the paper's ablation).

  python -m rlvr_jax.main --config=configs/lab/no_entropy.py:index=I,seed=0 \
      --workdir=/tmp/rlvr_jax_lab/no_ent_s0
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.lab_one_shot_config(arg)
    c.loss.entropy_coef = 0.0
    return c

"""Lab: 1-shot with the entropy term only (pg_coef = 0; the paper's ablation).

As configs/entropy_only.py runs it on π1 (that file cites the source): the
policy-gradient and KL terms at 0, weight decay 0 (every lab run has 0), only
the entropy bonus left.

  python -m rlvr_jax.main --config=configs/lab/entropy_only.py:index=I,seed=0 \
      --workdir=/tmp/rlvr_jax_lab/ent_only_s0
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.lab_one_shot_config(arg)
    c.loss.pg_coef = 0.0  # no reward signal: only the entropy bonus
    c.loss.kl_coef = 0.0  # dropped, as the paper's row (configs/entropy_only.py)
    return c

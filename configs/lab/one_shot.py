"""Lab: 1-shot RLVR, one pool example replicated to the batch (the π1 run in small).

`index=I` names the example (its id in the synthetic pool): rank 1 of the
full-pool run's historical variance for the headline run, a low-ranked one
for the low-variance comparison:

  python -m rlvr_jax.select --workdir=/tmp/rlvr_jax_lab/full_s0 --ranks=1
  python -m rlvr_jax.main --config=configs/lab/one_shot.py:index=I,seed=0 \
      --workdir=/tmp/rlvr_jax_lab/top_s0
Ablations: configs/lab/entropy_only.py (pg_coef = 0), no_entropy.py
(entropy_coef = 0). Other arguments as in base_config.lab_rl_config.
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    return base.lab_one_shot_config(arg)

"""The 4-example run {π1, π2, π13, π1209}: each replicated 32× into the
128-row batch; otherwise the π1 recipe. The paper's 4-shot row.

The reference stores this set as
data/train/one_shot_rlvr/merge_pi1_pi2_pi13_pi1209_r128.parquet
(tests/test_reference_data.py checks that this config builds the same rows).
  python -m rlvr_jax.main --config=configs/four_shot.py --workdir=/tmp/four_shot \
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (124, 267, 682, 789)  # π1, π2, π13, π1209
    return base.apply_arg(c, arg)

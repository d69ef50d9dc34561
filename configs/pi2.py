"""π2 alone (DSR-sub index 267, rank 2 by historical variance) replicated to
128 rows; otherwise the π1 recipe. The paper's 1-shot row for π2.

The reference stores this set as data/train/one_shot_rlvr/pi2_r128.parquet
(tests/test_reference_data.py checks that this config builds the same rows).
  python -m rlvr_jax.main --config=configs/pi2.py --workdir=/tmp/pi2 \
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (267,)  # π2
    return base.apply_arg(c, arg)

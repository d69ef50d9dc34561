"""π1209 alone (DSR-sub index 789, the last rank by historical variance: its
training accuracy was 0 every time it was sampled) replicated to 128 rows;
otherwise the π1 recipe. The paper's 1-shot row for π1209.

The reference stores this set as data/train/one_shot_rlvr/pi1209_r128.parquet
(tests/test_reference_data.py checks that this config builds the same rows).
  python -m rlvr_jax.main --config=configs/pi1209.py --workdir=/tmp/pi1209 \
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (789,)  # π1209
    return base.apply_arg(c, arg)

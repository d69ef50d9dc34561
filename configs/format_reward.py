"""Control: π1 rewarded for format alone (`reward.kind="format"`).

A response earns 1 for a well-formed final boxed answer, right or wrong
(rlvr_jax/reward, base_config's `reward.kind`). It separates the gain that is only format
correction from the rest: the paper's abstract (arXiv 2504.20571v3) reports
π1's MATH500 gain as "8.6% improvement beyond format correction" and the
six-benchmark gain as "7.0% non-format gain". How the paper measured format
correction could not be read here; this config is our format-only control on
the π1 recipe.
  python -m rlvr_jax.main --config=configs/format_reward.py \
      --workdir=/tmp/format_reward --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (124,)  # π1
    c.reward.kind = "format"
    return base.apply_arg(c, arg)

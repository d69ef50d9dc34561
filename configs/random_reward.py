"""Control: π1 with a random reward (`reward.kind="random"`).

Each response earns 1 with probability `reward.random_p` (0.5), drawn from
the seed and blind to the response: the spurious-reward control of Shao et
al. 2025 ("Spurious Rewards"), not a row of the 1-shot RLVR paper. Against
configs/pi1.py it shows what the verifiable reward adds.
  python -m rlvr_jax.main --config=configs/random_reward.py \
      --workdir=/tmp/random_reward --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (124,)  # π1
    c.reward.kind = "random"
    return base.apply_arg(c, arg)

"""The lab's warm start: SFT of a small random Qwen2 on the synthetic pool.

  python -m rlvr_jax.sft --config=configs/lab/sft.py --workdir=/tmp/lab/sft
  python -m rlvr_jax.sft --config=configs/lab/sft.py:tiny --workdir=/tmp/lab/sft_t

Every RL config under configs/lab/ starts from this run's last checkpoint
(`checkpoint.resume_from`). Arguments: see `base_config.lab_config`.
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c, rest = base.lab_config(arg)
    # 1,200 steps of 32: under 5 passes over the 8,000 training problems
    # (docs/lab.md: 800 steps over 1,200 problems memorised them).
    c.train.steps = 1200
    c.train.batch_size = 32
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 20
    c.optim.decay_steps = 1200
    c.optim.weight_decay = 0.0
    c.eval.every = 200
    c.checkpoint.every = 200
    c.checkpoint.keep = 1
    if "tiny" in (arg or ""):
        c.train.steps, c.eval.every, c.checkpoint.every = 4, 4, 4
        c.optim.decay_steps = 4
    return base.apply_arg(c, rest)

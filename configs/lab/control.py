"""Lab control: a 1-shot run rewarded without the answer's correctness.

`reward=format` pays 1 for a well-formed final boxed answer, right or wrong;
`reward=random` pays 1 with probability 0.5, drawn from the seed and blind
to the response (Shao et al. 2025, "Spurious Rewards"). Next to
configs/lab/one_shot.py on the same example they show what the verifiable
reward adds (configs/format_reward.py and random_reward.py are the same
controls on π1):

  python -m rlvr_jax.main --config=configs/lab/control.py:index=I,reward=format,seed=0 \
      --workdir=/tmp/rlvr_jax_lab/fmt_s0
"""

from rlvr_jax import base_config as base

KINDS = ("format", "random")


def get_config(arg=None):
    kind, rest = base.pop_arg(arg, "reward", "")
    if kind not in KINDS:
        raise ValueError(
            f"a lab control needs reward=format or reward=random, not {kind!r}"
        )
    c = base.lab_one_shot_config(rest)
    c.reward.kind = kind
    return c

"""The full 1,209-example DSR-sub pool (the paper's 1.2k baseline).

Shuffled with the seed, drop_last: 9 steps of 128 prompts per epoch.
2,000 steps (~222 epochs), as π1: the reference's training script sets
`trainer.total_epochs=2000` (18,000 steps at 9 an epoch), but its evaluation
script (Qwen2.5-Eval/evaluation/sh/eval_one_experiment_all_ckpts.sh, block
"DSR-sub") sweeps `GLOBAL_STEP_LIST=($(seq 20 20 2000))`, the same steps as
for π1, so its DSR-sub numbers come from steps up to 2,000 (our reading).
The paper's own text on the step count could not be read here.
  python -m rlvr_jax.main --config=configs/dsr_sub.py --workdir=/tmp/dsr_sub \
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = ()  # the whole pool
    c.data.replicate = 0  # no replication: plain epochs
    c.train.steps = 2000  # the reference's evaluated steps are 20, 40, ..., 2000
    return base.apply_arg(c, arg)

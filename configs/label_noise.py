"""π1 trained on a wrong label (the label-robustness ablation).

The paper discusses "label robustness" (abstract, arXiv 2504.20571v2), but the
wrong labels it tried on π1 could not be read here (only the paper's abstract
was retrievable), so the default is ours and plainly wrong: "4". π1 asks for
a wind velocity; its exact answer is ∛2048 ≈ 12.70 and the pool's label is
12.8. 4 is a number of the problem itself (4 pounds, 4 square feet), a wrong
answer the model can plausibly write: a label it never writes gives every
group all-zero rewards, hence zero advantages and no policy-gradient signal,
and the run would test only the entropy and KL terms. Other labels:
  --config.data.label_override='124=12.7'   the exact value instead of 12.8
  --config.data.label_override='124=929292' one the model will not guess
  python -m rlvr_jax.main --config=configs/label_noise.py --workdir=/tmp/label \
      --config.model.path=/path/to/Qwen2.5-Math-1.5B
The run's console says which label each overridden example trains on. With
`:tiny` (the built-in task "What is 3 + 4?", index 0) the label is "8".
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.data.indices = (124,)  # π1 (pool label "12.8")
    c.data.label_override = "124=4"
    c = base.apply_arg(c, arg)
    if not c.data.train_path:  # `tiny`: the built-in task, no π1 to relabel
        c.data.label_override = "0=8"
    return c

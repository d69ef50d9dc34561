"""π1 on Qwen2.5-Math-7B: the paper's 7B row (GRPO on one example, index 124).

The reference trained Qwen2.5-Math-7B (its README lists the model and its
W&B project logs the runs) but ships scripts for the 1.5B runs only, so this
is the 1.5B recipe (docs/recipe.md, "Other models"): 128 prompts × 8
responses, lr 1e-6, KL 0.001, entropy 0.001, temperature 0.6, prompts ≤ 1024
and responses ≤ 3072 tokens, which together fill the model's 4,096-token
context exactly.

  python -m rlvr_jax.main --config=configs/qwen25_math_7b.py --workdir=/tmp/pi1_7b \
      --config.model.path=/path/to/Qwen2.5-Math-7B
Plan it first (the fp32 train state alone is 122 GB):
  python -m rlvr_jax.plan --config=configs/qwen25_math_7b.py --topology=v5e:4x4
On a v5e-16 it fits (peak 17.10 of 17.18 GB, the update) under the overrides
the plan finds (docs/plan.md, "The paper's other models"):
  --config.train.reference_on_host=True --config.train.logits_chunk=256 \
  --config.rollout.chunk_size=128
(its time estimate needs --config.model.attention=xla for now: 206 s a step)
Laptop CPU (a tiny random Qwen2, the built-in task):
  python -m rlvr_jax.main --config=configs/qwen25_math_7b.py:tiny --workdir=/tmp/t7
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.model.path = "Qwen/Qwen2.5-Math-7B"
    c.data.indices = (124,)  # π1
    return base.apply_arg(c, arg)

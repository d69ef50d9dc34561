"""DeepSeek-R1-Distill-Qwen-1.5B at the reference's 8k response length.

The reference README's R1-Distill table: 1-shot (π1), 4-shot ({π1, π2, π13,
π1209}, 32 rows each), 16-shot and the 1.2k DSR-sub pool, trained with 8,192
response tokens and evaluated with rllm's protocol (configs/r1_distill_eval.py).
The prompt is the model's own chat template, which opens the assistant turn
with "<think>\\n"; the reward reads the answer after "</think>" and a
response that never closes its thinking scores 0 (`reward.think`, as the
reference's deepscaler reward with use_think; docs/recipe.md, "Other models").

Which examples (config argument, comma-separated with the usual ones):
  (none)          π1 (index 124), replicated to 128 rows
  shots=4         {π1, π2, π13, π1209} = indices 124, 267, 682, 789
  indices=A+B+... any examples of the pool, e.g. the 16-shot set once its
                  list is known (the reference does not publish it)
  pool            the whole 1,209-example DSR-sub, plain epochs

  python -m rlvr_jax.main --config=configs/r1_distill.py:shots=4 \
      --workdir=/tmp/r1_4shot --config.model.path=/path/to/DeepSeek-R1-Distill-Qwen-1.5B
  python -m rlvr_jax.plan --config=configs/r1_distill.py --topology=v5e:2x4
Laptop CPU (a tiny random Qwen2, the tiny tokenizer in R1's chat format):
  python -m rlvr_jax.main --config=configs/r1_distill.py:tiny --workdir=/tmp/tr1
"""

from rlvr_jax import base_config as base

SHOTS = {1: (124,), 2: (124, 682), 4: (124, 267, 682, 789)}


def get_config(arg=None):
    shots, rest = base.pop_arg(arg, "shots", "1")
    indices, rest = base.pop_arg(rest, "indices", "")
    pool, rest = base.pop_arg(rest, "pool")
    c = base.base_config()
    c.model.path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    if pool:
        c.data.indices = ()
        c.data.replicate = 0
    elif indices:
        c.data.indices = tuple(int(i) for i in indices.split("+"))
    else:
        if int(shots) not in SHOTS:
            raise ValueError(f"shots={shots}: known sets {sorted(SHOTS)}; or indices=")
        c.data.indices = SHOTS[int(shots)]
    c.rollout.max_new_tokens = 8192  # the reference's training length
    c.eval.max_new_tokens = 8192
    c.reward.think = True
    return base.apply_arg(c, rest, tiny_chat="r1")

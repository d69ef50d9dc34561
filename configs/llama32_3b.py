"""π1 on Llama-3.2-3B-Instruct: the paper's Llama row (GRPO on index 124).

The reference prompts Llama exactly as Qwen: the parquet's user message
(the problem and "Let's think step by step and output the final answer
within \\boxed{}.") through the model's own chat template, which adds the
Llama 3.2 system header ("Cutting Knowledge Date: December 2023", and a
"Today Date" that rlvr_jax fixes to the template's own default, 26 Jul 2024,
so a prompt does not change with the calendar). Generation stops on
<|eot_id|>, <|eom_id|> or <|end_of_text|>. Its `main_ppo.py` grades a model
whose path contains "llama" with the same boxed-answer reward as Qwen
(docs/recipe.md, "Other models"). Hyperparameters: the 1.5B recipe (the
reference ships no Llama script).

  python -m rlvr_jax.main --config=configs/llama32_3b.py --workdir=/tmp/pi1_llama \
      --config.model.path=/path/to/Llama-3.2-3B-Instruct
  python -m rlvr_jax.plan --config=configs/llama32_3b.py --topology=v5e:2x4
On a v5e-8 its KV cache (8 KV heads: 4× the 1.5B model's per token) needs
fewer decode slots and a smaller micro-batch (docs/plan.md, "The paper's
other models"): --config.rollout.chunk_size=128 --config.train.micro_batch_size=8
Laptop CPU (a tiny random Llama with llama3 RoPE scaling, the tiny tokenizer
in the Llama 3 chat format, the built-in task):
  python -m rlvr_jax.main --config=configs/llama32_3b.py:tiny --workdir=/tmp/tl
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c = base.base_config()
    c.model.path = "meta-llama/Llama-3.2-3B-Instruct"
    c.data.indices = (124,)  # π1
    return base.apply_arg(c, arg, tiny_preset="tiny_llama", tiny_chat="llama3")

"""DeepSeek-R1-Distill-Qwen-1.5B under rllm's evaluation protocol.

Reproduces the 1-shot RLVR reference README's section "Evaluation for
DeepSeek-R1-Distill-Qwen-1.5B": the table "Evaluation length = 8192" (the
default) and, with `:32k`, "Evaluation length = 32768". The protocol is
rllm's (DeepScaleR's), which the reference uses for this model: temperature
0.6, top-p 0.95, avg@16 on MATH500, Minerva Math and OlympiadBench, avg@64 on
AIME24, AIME25 and AMC23 (pass@k is reported beside it). The prompt is the
problem followed by " Let's think step by step and output the final answer
within \\boxed{}." in the model's own chat template, which for R1-Distill
ends with `<｜Assistant｜><think>\\n`. Grading is the training reward's: the
last box only, under the think rule (`score.think`, the same function as
training's `reward.think`): only the text after the first `</think>` is
graded, and a response that never closes its thinking scores 0. The base
model's rows to compare with (avg of the six): 37.9 at 8k, 44.9 at 32k.

The base model, then every checkpoint of an R1-Distill training run:
  python -m rlvr_jax.evaluate --config=configs/r1_distill_eval.py \\
      --workdir=/tmp/eval_r1 \\
      --config.model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B
  python -m rlvr_jax.evaluate --config=configs/r1_distill_eval.py \\
      --workdir=/runs/r1_pi1 \\
      --config.tokenizer=/models/DeepSeek-R1-Distill-Qwen-1.5B
At 32,768 new tokens (R1's context is 131,072 positions, so prompt plus
response fit; evaluate checks every prompt against it):
  python -m rlvr_jax.evaluate --config=configs/r1_distill_eval.py:32k ...
Laptop CPU smoke test (tiny random model, 2 problems per benchmark, 2 and 4
samples instead of 16 and 64):
  python -m rlvr_jax.evaluate --config=configs/r1_distill_eval.py:tiny \\
      --workdir=/tmp/ev_r1 --config.model.path=/tmp/tiny_hf

Every other key is configs/eval.py's (this file starts from it).
"""

import importlib.util
import os

# rllm's samples per problem: avg@16 on the large sets, avg@64 on the small.
R1_SAMPLES = "math500=16,minerva_math=16,olympiadbench=16,aime24=64,aime25=64,amc23=64"
TINY_SAMPLES = "math500=2,minerva_math=2,olympiadbench=2,aime24=4,aime25=4,amc23=4"
ARGS = ("32k", "tiny")


def _eval_config(arg):
    """configs/eval.py's config. Loaded by path: config files are read by path,
    with no `configs` package importable."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval.py")
    spec = importlib.util.spec_from_file_location("rlvr_jax_eval_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg=None):
    tokens = [t for t in (arg or "").split(",") if t]
    for t in tokens:
        if t not in ARGS:
            raise ValueError(f"unknown r1_distill_eval argument {t!r} (known: {ARGS})")
    tiny = "tiny" in tokens
    c = _eval_config("tiny" if tiny else None)
    # The problem + the step-by-step suffix, in the tokenizer's chat template.
    c.template = "qwen25-math-cot-step"
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.95
    c.sampling.n_by_benchmark = R1_SAMPLES
    c.sampling.max_new_tokens = 32768 if "32k" in tokens else 8192
    # A KV cache of about 30 GB, as configs/eval.py's 256 rows of 4k tokens.
    c.sampling.chunk_rows = 32 if "32k" in tokens else 128
    c.score.mode = "boxed"  # the last box only, as rllm's reward reads it
    c.score.think = True
    if tiny:
        c.sampling.n_by_benchmark = TINY_SAMPLES
        c.sampling.max_new_tokens = 8
        c.sampling.chunk_rows = 16
    return c

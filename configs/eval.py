"""Evaluation on the paper's six benchmarks (docs/recipe.md, "Evaluation").

A Hugging Face model (the base model, or any exported checkpoint):
  python -m rlvr_jax.evaluate --config=configs/eval.py --workdir=/tmp/eval_base \
      --config.model.path=/models/Qwen2.5-Math-1.5B
Every checkpoint of a training run (a resumable sweep; results per step):
  python -m rlvr_jax.evaluate --config=configs/eval.py --workdir=/tmp/pi1 \
      --config.tokenizer=/models/Qwen2.5-Math-1.5B
  python -m rlvr_jax.plot --workdir=/tmp/pi1
Only some steps / benchmarks, a benchmark from its own file:
  ... --config.model.steps=0,500,1000 \
      --config.benchmarks=math500,aime24=/path/aime24/test.jsonl
Benchmarks through TensorFlow Datasets (array_record, no TensorFlow), prepared
once, offline, from the packaged files (or from --config.data.dir):
  ... --config.data.format=tfds --config.data.tfds_dir=~/tensorflow_datasets
pass@8 / avg@8 of MATH500 at T=0.6 instead of greedy:
  ... --config.benchmarks=math500 --config.sampling.temperature=0.6 \
      --config.sampling.n=8
Different sample counts (or temperatures) per benchmark, in one run:
  ... --config.sampling.n_by_benchmark=math500=16,aime24=64 \
      --config.sampling.temperature_by_benchmark=math500=0,aime24=0.6
On a TPU pod / GPU cluster, every process runs the same command with
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
(or none where the cluster is detected; docs/cluster.md).
Laptop CPU smoke test (a tiny random model, 2 problems per benchmark):
  python -m rlvr_jax.evaluate --config=configs/eval.py:tiny --workdir=/tmp/ev \
      --config.model.path=/tmp/tiny_hf

The benchmark files ship with the package (`rlvr_jax.data.paper_data`): math500,
aime24, aime25, amc23, minerva_math, olympiadbench, and the replicated
aime24x8, aime25x8, amc23x8. `data.dir` points at another directory of
`<benchmark>/test.jsonl` files instead.

Reasoning models (DeepSeek-R1-Distill-Qwen-1.5B) are evaluated under rllm's
protocol, which the 1-shot RLVR reference uses for them:
configs/r1_distill_eval.py (T=0.6, top-p 0.95, avg@16 on MATH500, Minerva
Math and OlympiadBench, avg@64 on AIME24, AIME25 and AMC23, 8k or 32k new
tokens). Its scoring is the training reward's: the last box only
(`score.mode=boxed`), under the think rule (`score.think=True`, the same
function as training's `reward.think`): only the text after the first
`</think>` (up to a second one) is graded, and a response that never closes
its thinking scores 0. The rule reads the response alone; the reference reads
prompt and response together and also asks for `<think>`, which R1's chat
template puts at the end of the prompt, so the two agree.
"""

from ml_collections import config_dict

PAPER_BENCHMARKS = "math500,aime24,aime25,amc23,minerva_math,olympiadbench"


def get_config(arg=None):
    c = config_dict.ConfigDict()
    c.seed = 0  # sampling seed of the T > 0 benchmarks

    c.model = config_dict.ConfigDict()
    c.model.path = ""  # HF dir, dir of per-step HF dirs, or orbax; "" = workdir
    c.model.steps = "all"  # sweeps: "all", "latest" or "0,20,40"
    c.model.step = -1  # step label of a single HF model for plots; -1 = none
    c.model.dtype = "bfloat16"  # compute dtype (the harness runs bf16)
    c.model.param_dtype = "bfloat16"  # weights are only read: bf16 halves memory

    c.tokenizer = ""  # HF dir or "tiny"; "" = the model's own (HF dirs)

    c.benchmarks = PAPER_BENCHMARKS  # comma list; `name=/path.jsonl` overrides a file
    c.template = "qwen25-math-cot"  # or qwen25-math-cot-step, or "...{problem}..."

    c.data = config_dict.ConfigDict()
    c.data.dir = ""  # directory of <benchmark>/test.jsonl files; "" = packaged
    c.data.format = "jsonl"  # "jsonl" or "tfds" (array_record builders)
    c.data.tfds_dir = ""  # TFDS data_dir; "" = TFDS's default
    c.data.limit = 0  # first N problems per benchmark; 0 = all

    c.sampling = config_dict.ConfigDict()
    c.sampling.temperature = -1.0  # < 0: each benchmark's protocol (0 or 0.6)
    c.sampling.n = 0  # samples per problem; 0: the protocol's (1 or 8)
    # "math500=16,aime24=64": per benchmark, over `n` / `temperature`
    c.sampling.n_by_benchmark = ""
    c.sampling.temperature_by_benchmark = ""
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0  # 0 = off
    c.sampling.max_new_tokens = 3072
    c.sampling.chunk_rows = 256  # responses per sampler call (KV cache ~29 GB)
    c.sampling.cache_dtype = "bfloat16"
    c.sampling.prompt_buckets = ()  # padded prompt widths; () = powers of two

    c.score = config_dict.ConfigDict()
    c.score.timeout_s = 3.0  # per comparison; a timeout counts as wrong
    c.score.workers = 0  # checker processes; 0 = number of CPUs
    c.score.mode = "eval"  # "eval": lenient extraction; "boxed": the last box only
    c.score.think = False  # grade only after </think>; unclosed thinking scores 0

    c.analysis = config_dict.ConfigDict()
    c.analysis.reflection_words = "rethink,recheck,recalculate"

    c.overwrite = False  # True: regenerate even what is already saved

    if arg == "tiny":
        c.data.limit = 2
        c.sampling.max_new_tokens = 8
        c.sampling.chunk_rows = 16
        c.sampling.cache_dtype = "float32"
        c.sampling.prompt_buckets = (1024,)  # one width: one compile per n
        c.model.dtype = "float32"  # CPUs are slow at bf16 matmuls
        c.model.param_dtype = "float32"
        c.score.workers = 2
    elif arg:
        raise ValueError(f"unknown eval config argument {arg!r} (known: 'tiny')")
    return c

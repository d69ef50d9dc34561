"""The planner against one real accelerator: decode, one RL step, MFU, memory.

The planner (`python -m rlvr_jax.plan`) gives roofline bounds; this script
measures the same programs on the local accelerator and writes the
calibration file that turns those bounds into estimates
(`rlvr_jax.planning.calibration`; `python -m rlvr_jax.plan ...
--calibration=FILE`). On one GPU (an H100 or H200):

    pip install -e ".[cuda]" && python -m benchmarks.device --out=/tmp/device

It is sized to end inside 8 minutes there: a time guard (`--budget_s`,
default 420) skips, with a note, any part that would not end inside the
budget by its expected duration (`NEEDS_S`, compilation included);
`--skip=mix` (or decode) saves a part's minute or two. On a machine with
no network access where jax and its GPU plugin are already installed,
install with `pip install --no-deps -e .` (and wheels of any of setup.py's
CORE packages missing there, e.g. ml-collections) and run the same command.
On CPU, tiny (tests/test_device_bench.py runs it in-process):

    JAX_PLATFORMS=cpu python -m benchmarks.device --tiny --out=/tmp/device_tiny

The model is Qwen2.5-Math-1.5B's shape (`ModelConfig.qwen2_5_math_1_5b`:
bf16 compute, fp32 master weights) with random weights (no download); in
`--tiny` mode, `ModelConfig.tiny` in fp32 against a made-up CPU `Chip`.
Every time is `time.perf_counter` around calls that end in
`jax.block_until_ready` (or a copy to the host), after a warm-up call
(compilation and a first run, reported apart), the median of `--repeats`.
The parts, in the order they run (each written to DIR/device.json as soon
as it finishes, so a timeout loses nothing):

1. decode: the sampler's decode step (`engine.lower_decode_step`, the loop
   body of every rollout) compiled for 1, 16, 64 and 256 slots, all live,
   attending over a 512-column cache (the prompt bucket and what was
   generated so far), chained 8 calls per timing with one sync at the end.
   Tokens/s = slots / step time. Its HBM roofline is the least bytes a step
   must read (`planning.report.decode_min_bytes`: the compute-dtype weights
   and the slots' filled cache) over the chip's bandwidth
   (`planning/chips.py`); efficiency = roofline / measured. The compiled
   program's own HBM bytes (`planning.hlo`) are reported beside them.
2. RL step: configs/pi1.py at 16 prompts × 8 samples (one prompt bucket of
   256; the prompt is 140 random tokens, the length of π1's in Qwen2.5
   tokens), every other setting π1's, built by `rlvr_jax.build` as
   `train.run` builds it. Timed separately: sampling (`engine.rollout`:
   the weights' prepare, the prefill and the continuous decode loop through
   π1's slots, to host arrays, as the train loop calls it), the
   reference's log-prob pass and the learner's train step. Random weights
   stop only by chance, and full-length π1 rollouts (3,072 tokens) would
   take most of the budget: the rollout runs with no stop token at a
   reduced `rollout.max_new_tokens` (512, `--new_tokens`), every response
   full length: exactly the worst case the planner prices. The log-prob pass and the train step run
   on the learner batch packed from that rollout
   (`packing.learner_batch`), which is the planner's widest batch.
3. learner MFU: the train step's model FLOPs (the formula of
   `planning.report.learner_mfu` and benchmarks/learner.py, every row the
   planned widest sequence, as the planner counts) over its measured time
   × the chip's bf16 peak; `mfu_real_tokens` counts the real sequences.
4. plan: `rlvr_jax.plan.plan` of that same reduced config on this device
   (predicted peak memory per chip and roofline time of each part), beside
   the measured peak memory (`memory_stats()["peak_bytes_in_use"]`, the
   process's peak so far, where the device reports it) and times; then
   DIR/calibration.json: measured and roofline seconds of sampling,
   log-probs and update (`planning.calibration.write`).
5. length mix: the learner on π1's real length mix at this batch size:
   the step's 128 response lengths drawn by whole groups from 100 groups
   of 8 sampled Qwen2.5-Math response lengths (the packaged mix,
   rlvr_jax/data/lengths/qwen25_math_responses.json: median 346, p99 1,569
   tokens; a seeded lognormal of that median and p99 if the file is
   missing), capped at
   π1's 3,072, packed with π1's micro-batch token budget
   (`packing.pack`), timed as in part 2, with its token efficiency and its
   MFU on real tokens. Not calibrated: the plan of part 4 prices its mix
   at the reduced max_new_tokens (its at-mix roofline times are recorded
   there, for reference), this part the real π1 learner shapes.

The table goes to stdout; DIR/device.json holds every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import rlvr_jax.data
from rlvr_jax import build, learner, sharding
from rlvr_jax import io as io_lib
from rlvr_jax import plan as plan_lib
from rlvr_jax.learner import packing
from rlvr_jax.model import decoder
from rlvr_jax.planning import calibration, chips, programs, report
from rlvr_jax.planning import compile as compile_lib
from rlvr_jax.rollout import engine, sampling

GB = 1e9
# The packaged mix (rlvr_jax/data/lengths/SOURCES.md), the planner's default.
MIX_FILE = os.path.join(
    os.path.dirname(rlvr_jax.data.__file__), "lengths", "qwen25_math_responses.json"
)
MIX_MEDIAN, MIX_P99 = 346, 1569  # the file's; the fallback lognormal's
PI1_MAX_NEW = 3072  # π1's rollout.max_new_tokens: the mix's cap

# A made-up CPU "chip" so that the tiny mode can be planned and calibrated
# (`plan(chip=...)`); its figures only scale the tiny mode's rooflines.
TINY_CHIP = chips.Chip("cpu", 8 * 2**30, 20e9, 100e9)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one mode measures.

    Attributes:
      prompts, n: train.batch_size and rollout.n of the reduced π1 step.
      new_tokens: rollout.max_new_tokens of the timed rollout.
      mix_new_tokens: the length mix's cap (π1's max_new_tokens); the mix
        is scaled by mix_new_tokens / 3072 (1 on an accelerator).
      prompt_len, bucket: the prompt's real tokens and its bucket.
      micro_batch: train.micro_batch_size.
      decode_slots, decode_fill: part 1's slot counts and cache columns.
      chain: decode steps per timing (one sync at the end).
      repeats: timed calls after the warm-up (their median is reported).
    """

    prompts: int
    n: int
    new_tokens: int
    mix_new_tokens: int
    prompt_len: int
    bucket: int
    micro_batch: int
    decode_slots: tuple[int, ...]
    decode_fill: int
    chain: int
    repeats: int


ACCELERATOR = Sizes(
    prompts=16,
    n=8,
    new_tokens=512,
    mix_new_tokens=PI1_MAX_NEW,
    # π1's prompt (dsr_sub example 124 in the qwen-math chat template) is
    # 140 Qwen2.5 tokens (tests/wheel_tokenizers.py's real tokenizer).
    prompt_len=140,
    bucket=256,
    micro_batch=16,
    decode_slots=(1, 16, 64, 256),
    decode_fill=512,
    chain=8,
    repeats=3,
)
TINY = Sizes(
    prompts=2,
    n=4,
    new_tokens=8,
    mix_new_tokens=24,
    prompt_len=10,
    bucket=16,
    micro_batch=8,
    decode_slots=(1, 8),
    decode_fill=64,
    chain=2,
    repeats=2,
)

# --budget_s's default on an accelerator: with the imports, the device's
# start and a part that runs past its estimate, inside 8 minutes.
BUDGET_S = 420.0
# Seconds each part needs on an accelerator (compilation included, guessed
# before any GPU run), so that the time guard skips a part that would not
# finish inside the budget. "decode" is per slot count; "sampling",
# "logprobs" and "update" are part 2's phases, each checked before it starts.
NEEDS_S = {
    "setup": 20,
    "decode": 20,
    "sampling": 60,
    "logprobs": 30,
    "update": 60,
    "plan": 150,
    "mix": 100,
}


# ------------------------------------------------------------------ config
def reduced_config(sizes: Sizes, tiny: bool, new_tokens: int | None = None):
    """configs/pi1.py at `sizes` (`new_tokens`: rollout.max_new_tokens)."""
    from configs import pi1

    c = pi1.get_config()
    new = new_tokens or sizes.new_tokens
    c.model.path = ""
    c.model.preset = "tiny" if tiny else "qwen2_5_math_1_5b"
    if tiny:  # XLA:CPU has no fast bf16 matmul
        c.model.dtype = "float32"
        c.rollout.cache_dtype = "float32"
    c.data.prompt_buckets = (sizes.bucket,)
    c.data.max_prompt_len = sizes.bucket
    c.train.batch_size = sizes.prompts
    c.rollout.n = sizes.n
    c.rollout.max_new_tokens = new
    c.train.micro_batch_size = sizes.micro_batch
    c.train.steps = 1
    c.eval.every = 0  # evaluation is sampling too: its calibration is sampling's
    c.eval.max_new_tokens = new
    return c


def model_for(config, tiny: bool) -> decoder.ModelConfig:
    """The reduced config's model (`tiny`: no tokenizer is built for it)."""
    if tiny:
        return decoder.ModelConfig.tiny(
            dtype=config.model.dtype, param_dtype=config.model.param_dtype
        )
    return build.model_config(config)


def response_lengths(
    prompts: int, n: int, cap: int, seed: int = 0, path: str = MIX_FILE
) -> tuple[np.ndarray, str]:
    """(`prompts` × n response lengths in [1, cap], where they come from).

    Whole groups of the mix file (one group per prompt, its first n
    lengths; groups drawn with a seeded rng), scaled by cap / 3072; a
    seeded lognormal of the file's median and p99 if it cannot be read.
    """
    rng = np.random.default_rng(seed)
    try:
        with open(path) as f:
            groups = [g for g in json.load(f)["groups"] if len(g) >= n]
        picked = rng.choice(len(groups), prompts, replace=len(groups) < prompts)
        lengths = np.concatenate([np.asarray(groups[i][:n], float) for i in picked])
        source = f"{os.path.basename(path)}: {prompts} of its {len(groups)} groups"
    except (OSError, ValueError, KeyError):
        sigma = math.log(MIX_P99 / MIX_MEDIAN) / 2.326  # p99 = 2.326 σ
        lengths = np.exp(rng.normal(math.log(MIX_MEDIAN), sigma, prompts * n))
        source = f"lognormal median {MIX_MEDIAN}, p99 {MIX_P99} (seed {seed})"
    lengths = np.round(lengths * cap / PI1_MAX_NEW)
    return np.clip(lengths, 1, cap).astype(np.int64), source


def model_flops(model: decoder.ModelConfig, lengths) -> float:
    """Model FLOPs of a train step on sequences of `lengths` tokens each.

    `planning.report.learner_mfu`'s formula (PaLM, appendix B) per
    sequence of t tokens: (6·N + 12·layers·heads·head_dim·t)·t, N the
    parameters doing matmuls (a tied embedding counted once, as the head).
    """
    n = decoder.count_params(decoder.abstract_params(model))
    if not model.tie_embeddings:
        n -= model.vocab_size * model.d_model
    attention = 12 * model.n_layers * model.n_heads * model.head_dim
    t = np.asarray(lengths, np.float64)
    return float(np.sum((6 * n + attention * t) * t))


# --------------------------------------------------------------- recording
class Results:
    """device.json, rewritten as each part finishes, and the time guard."""

    def __init__(self, out: str, budget_s: float, needs: dict[str, float]):
        self.out, self.budget_s, self.needs = out, budget_s, needs
        self.start = time.perf_counter()
        self.data = {"parts": {}, "skipped": {}, "notes": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, part: str) -> bool:
        """Whether `part` may start: it is expected to end inside the budget
        (else it is skipped, with a note)."""
        needs = self.needs.get(part, 0.0)
        if self.elapsed() + needs <= self.budget_s:
            return True
        self.skip(
            part,
            f"time guard: {self.elapsed():.0f} s spent + ~{needs:.0f} s needed > "
            f"--budget_s={self.budget_s:.0f}",
        )
        return False

    def skip(self, part: str, why: str) -> None:
        self.data["skipped"][part] = why
        print(f"[{self.elapsed():6.1f} s] skipped {part}: {why}", flush=True)
        self.save()

    def put(self, part: str, figures: dict) -> None:
        figures = {**figures, "at_s": round(self.elapsed(), 2)}
        self.data["parts"][part] = figures
        self.save()

    def note(self, line: str) -> None:
        self.data["notes"].append(line)
        self.save()

    def save(self) -> None:
        text = json.dumps(self.data, indent=1, default=float) + "\n"
        io_lib.write_atomic(os.path.join(self.out, "device.json"), text)


def timed(fn, repeats: int) -> tuple[float, float, list[float]]:
    """(median seconds, warm-up seconds, every timed call) of `fn`, which
    must block until its work is done."""
    t0 = time.perf_counter()
    fn()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), warmup, times


def memory(device) -> dict[str, int]:
    """The device's bytes in use and the process's peak (empty where the
    device does not report them, e.g. XLA:CPU)."""
    try:
        stats = device.memory_stats() or {}
    except (AttributeError, NotImplementedError, jax.errors.JaxRuntimeError):
        stats = {}
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if stats.get(k)}


# ------------------------------------------------------------------ decode
def decode_args(lowered, compiled, fill: int, prompt_width: int, calls: int):
    """Concrete slot state and bookkeeping for a lowered decode step: every
    slot live at a step that keeps `calls` chained steps inside the cache,
    every cache column valid, placed as the compiled program takes them."""
    (args, _), (shardings, _) = lowered.args_info, compiled.input_shardings
    start = max(1, fill - prompt_width - calls - 1)

    def concrete(path, info, placement):
        name = jax.tree_util.keystr(path)
        shape, dtype = info.shape, info.dtype
        if name.endswith(("live_s", "valid_sw")):
            value = np.ones(shape, bool)
        elif name.endswith("step_s"):
            value = np.full(shape, start, np.int32)
        elif name.endswith("prompt_len_s"):
            value = np.full(shape, prompt_width, np.int32)
        elif name.endswith("row_s"):
            value = np.arange(math.prod(shape), dtype=np.int32).reshape(shape)
        else:
            value = np.zeros(shape, dtype)
        return jax.device_put(value, placement)

    state = jax.tree_util.tree_map_with_path(concrete, args[1], shardings[1])
    slots = jax.tree_util.tree_map_with_path(concrete, args[2], shardings[2])
    key = jax.device_put(jax.random.key(0), shardings[3])
    offset = jax.device_put(jnp.zeros((), jnp.int32), shardings[4])
    return state, slots, key, offset


def time_decode(compiled, weights, state, slots, key, offset, sizes) -> list:
    """Seconds per decode step: `sizes.repeats` timings of `sizes.chain`
    chained steps (each feeding the next its donated state, as the loop
    does) after one warm-up step, with one sync at the end of each."""

    def steps(count):
        nonlocal state, slots
        for _ in range(count):
            slots, state = compiled(weights, state, slots, key, offset)
        jax.block_until_ready((slots, state))

    steps(1)
    times = []
    for _ in range(sizes.repeats):
        t0 = time.perf_counter()
        steps(sizes.chain)
        times.append((time.perf_counter() - t0) / sizes.chain)
    return times


def decode_part(results, run, model, state, sizes, chip, log) -> None:
    """Part 1: the decode step's tokens/s and HBM efficiency by slot count."""
    mesh, divisor = run.mesh, sharding.batch_divisor(run.mesh)
    weights = sampling.prepare(model, state.params, decode_sharding=run.decode_sharding)
    settings = dataclasses.replace(
        run.settings, eos_ids=(), max_new_tokens=sizes.decode_fill - sizes.bucket
    )
    rows = []
    counts = sorted({s + -s % divisor for s in sizes.decode_slots})
    for slots in counts:
        if not results.allows("decode"):
            break
        shape = engine.RolloutShape(slots, sizes.bucket, slots)
        lowered = engine.lower_decode_step(
            model, weights.decode, shape, settings, mesh, sizes.decode_fill
        )
        t0 = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        calls = 1 + sizes.repeats * sizes.chain
        args = decode_args(lowered, compiled, sizes.decode_fill, sizes.bucket, calls)
        times = time_decode(compiled, weights.decode, *args, sizes)
        step_s = float(np.median(times))
        least = report.decode_min_bytes(run, slots, sizes.decode_fill)
        roofline_s = least / chip.hbm_bytes_per_s
        _, compiled_bytes = compile_lib.cost(compiled)
        row = {
            "slots": slots,
            "cache_columns": sizes.decode_fill,
            "step_s": step_s,
            "tokens_per_s": slots / step_s,
            "least_hbm_bytes": least,
            "compiled_hbm_bytes": compiled_bytes,
            "roofline_s": roofline_s,
            "efficiency": roofline_s / step_s,
            "compile_s": compile_s,
        }
        rows.append(row)
        log(
            f"decode {slots:4d} slots × {sizes.decode_fill} columns: "
            f"{1e3 * step_s:8.3f} ms/step, {row['tokens_per_s']:10.0f} tokens/s; "
            f"roofline {1e3 * roofline_s:7.3f} ms ({least / GB:.2f} GB), "
            f"efficiency {100 * row['efficiency']:5.1f}%; compiled program "
            f"reads {compiled_bytes / GB:.2f} GB"
        )
        what = (
            "engine.lower_decode_step compiled for each slot count, every slot "
            f"live, attending over {sizes.decode_fill} cache columns in one "
            f"block; {sizes.chain} chained steps per timing, one sync; "
            "roofline: report.decode_min_bytes / the chip's bandwidth"
        )
        results.put("decode", {"what": what, "rows": rows})
        del args
    del weights


# ----------------------------------------------------------------- RL step
def rl_step_part(results, run, config, model, state, reference, sizes, chip, log):
    """Parts 2 and 3: sampling, the log-prob pass and the train step of one
    reduced π1 step, timed apart; the learner's measured MFU. Returns
    (the measured seconds by calibration kind, the train state)."""
    mesh, device = run.mesh, run.mesh.devices.flat[0]
    divisor = sharding.batch_divisor(mesh)
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, model.vocab_size, sizes.prompt_len).tolist()
    prompts = [prompt] * sizes.prompts  # π1: one example, replicated
    # No stop token: every response runs to max_new_tokens (random weights
    # would stop at random), the planner's worst case exactly.
    settings = dataclasses.replace(run.settings, eos_ids=())
    base_key = jax.random.key(config.seed)
    calls = [0]
    roll = None

    def sample():
        nonlocal roll
        calls[0] += 1
        roll = engine.rollout(
            model,
            state.params,
            prompts,
            settings,
            jax.random.fold_in(base_key, calls[0]),
            buckets=config.data.prompt_buckets,
            slots=config.rollout.chunk_size,
            mesh=mesh,
            decode_sharding=run.decode_sharding,
        )  # returns host arrays: synced

    figures = {"memory_before": memory(device)}
    sample_s, warm, times = timed(sample, sizes.repeats)
    full = int(np.sum(roll.lengths == settings.max_new_tokens))
    figures["sampling"] = {
        "what": "engine.rollout as train.run calls it: prepare, prefill, the "
        "continuous decode loop, results to the host; no stop token",
        "seconds": sample_s,
        "warmup_s": warm,
        "times_s": times,
        "responses": int(roll.lengths.size),
        "full_length_responses": full,
        "new_tokens": settings.max_new_tokens,
        "slots": roll.slots,
        "decode_steps": roll.decode_steps,
        "tokens_per_s": float(roll.lengths.sum()) / sample_s,
        "memory": memory(device),
    }
    log(
        f"sampling: {sizes.prompts} prompts × {sizes.n} samples × "
        f"{settings.max_new_tokens} tokens ({full} of {roll.lengths.size} full "
        f"length) through {roll.slots} slots in {roll.decode_steps} decode steps: "
        f"{sample_s:.3f} s ({figures['sampling']['tokens_per_s']:.0f} tokens/s; "
        f"warm-up {warm:.1f} s)"
    )
    results.put("rl_step", figures)

    # ---- the learner batch, as train.run packs it from the rollout.
    rewards = rng.integers(0, 2, roll.lengths.size).astype(np.float32)
    adv = np.asarray(learner.advantages(rewards, sizes.n), np.float32)
    host = packing.learner_batch(
        roll, adv, run.learner, limit=build.learner_width(config), divisor=divisor
    )
    planned = {k: tuple(s) for k, (s, _) in run.shapes.learner.items()}
    same = all(host[k].shape == planned[k] for k in planned)
    batch = sharding.shard_batch(mesh, jax.tree.map(sharding.process_rows, host))
    figures["learner_batch"] = {
        "shape": list(host["tokens"].shape),
        "head_columns": host["head_cols"].shape[1],
        "token_efficiency": packing.token_efficiency(host),
        "planned_shape_matches": same,
    }
    if not same:
        results.note(
            f"the packed batch {host['tokens'].shape} is not the planned "
            f"{planned['tokens']}: the learner's calibration compares two shapes"
        )

    measured = {"sampling": sample_s}
    if not results.allows("logprobs"):
        return measured, state
    logprobs_fn = learner.jit_logprobs(model, run.learner, mesh)
    out = {}

    def ref_pass():
        out["ref_logp"] = jax.block_until_ready(logprobs_fn(reference, batch))

    logp_s, warm, times = timed(ref_pass, sizes.repeats)
    batch["ref_logp"] = out["ref_logp"]
    measured["logprobs"] = logp_s
    figures["logprobs"] = {
        "what": "learner.jit_logprobs of the bf16 reference on the batch "
        "packed from the rollout (on the device already)",
        "seconds": logp_s,
        "warmup_s": warm,
        "times_s": times,
        "memory": memory(device),
    }
    log(
        f"reference log-probs: batch {host['tokens'].shape}: {logp_s:.3f} s "
        f"(warm-up {warm:.1f} s)"
    )
    results.put("rl_step", figures)
    if not results.allows("update"):
        return measured, state

    train_step = learner.jit_train_step(model, run.learner, run.tx, mesh)
    holder = [state]

    def update():
        new, metrics = train_step(holder[0], batch)
        holder[0] = new
        jax.block_until_ready((new, metrics))

    update_s, warm, times = timed(update, sizes.repeats)
    measured["update"] = update_s
    # Part 3: model FLOPs over measured time × peak (report.learner_mfu,
    # here on the measured seconds; the batch is the planned widest one).
    step_program = programs.Program(
        name="train_step",
        calls=1,
        arguments=0,
        outputs=0,
        alias=0,
        temp=0,
        seconds=update_s,
    )
    mfu = report.learner_mfu(run, step_program, chip)
    flops = mfu * update_s * run.mesh.size * chip.bf16_flops_per_s
    real = model_flops(model, roll.lengths + sizes.prompt_len)
    figures["update"] = {
        "what": "learner.jit_train_step (state donated) on that batch; "
        "model_flops as report.learner_mfu counts them (every row the "
        "planned widest sequence); mfu_real_tokens counts the real sequences",
        "seconds": update_s,
        "warmup_s": warm,
        "times_s": times,
        "micro_batch_rows": run.shapes.micro_batch,
        "model_flops": flops,
        "mfu": mfu,
        "mfu_real_tokens": real / (update_s * mesh.size * chip.bf16_flops_per_s),
        "memory": memory(device),
    }
    log(
        f"train step: {update_s:.3f} s (warm-up {warm:.1f} s); model "
        f"{flops / 1e12:.1f} TFLOP: MFU {100 * mfu:.1f}% of "
        f"{chip.bf16_flops_per_s / 1e12:.0f} TFLOP/s"
    )
    results.put("rl_step", figures)
    return measured, holder[0]


# -------------------------------------------------------------------- plan
PLAN_PARTS = {"sampling": "sampling", "logprobs": "logprob_passes", "update": "update"}


def plan_part(results, config, model, chip, measured, verbose, log):
    """Part 4: the planner's prediction of the same reduced config here,
    beside the measurement; returns the plan."""
    result = plan_lib.plan(
        config, chip=chip, model=model, eval_examples=0, search=False, verbose=verbose
    )
    device = jax.devices()[0]
    peak = memory(device).get("peak_bytes_in_use")
    parts = {}
    for kind, part in PLAN_PARTS.items():
        roofline = result.times.get(part, 0.0)
        if roofline <= 0:
            continue
        parts[kind] = {"roofline_s": roofline}
        if kind in measured:
            parts[kind]["measured_s"] = measured[kind]
            parts[kind]["measured_over_roofline"] = measured[kind] / roofline
    figures = {
        "what": "rlvr_jax.plan.plan of the reduced config on this device: "
        "roofline seconds per part and resident bytes per phase; the measured "
        "peak is the process's so far (the decode part's buffers included)",
        "topology": result.topology,
        "chip": chip.name,
        "hbm_bytes_per_chip": result.hbm_bytes_per_chip,
        "predicted_peak_bytes": result.peak_bytes_per_chip,
        "predicted_phase_bytes": {k: v for k, v in result.phases.items() if v > 0},
        "parts": parts,
        "learner_mfu_roofline": result.mfu,
        "decode_hbm_efficiency_compiled": result.decode_efficiency,
    }
    if peak:
        figures["measured_peak_bytes"] = peak
    mix = getattr(result, "mix", None)  # the step priced at a length mix
    if mix is not None:
        figures["roofline_at_mix"] = {
            "source": mix.source,
            "times_s": {k: v for k, v in mix.times.items() if v > 0},
        }
    results.put("plan", figures)
    log(f"plan of the same step on {result.topology} (roofline) vs measured:")
    for kind, p in parts.items():
        m = p.get("measured_s")
        ratio = f"{p['measured_over_roofline']:6.2f}×" if m else "      "
        shown = f"{m:9.3f} s" if m else "  (not measured)"
        log(
            f"  {kind:<10} roofline {p['roofline_s']:9.3f} s   measured {shown} {ratio}"
        )
    log(
        f"  peak memory per chip: predicted {result.peak_bytes_per_chip / GB:.2f} GB, "
        + (f"measured {peak / GB:.2f} GB" if peak else "not reported by this device")
    )
    return result


def write_calibration(results, result, measured, sizes, out, log) -> str | None:
    """DIR/calibration.json from the measured and roofline seconds."""
    kinds = {
        kind: (measured[kind], result.times[part])
        for kind, part in PLAN_PARTS.items()
        if kind in measured and result.times.get(part, 0.0) > 0
    }
    if not kinds:
        results.skip("calibration", "no part was both measured and planned")
        return None
    device = jax.devices()[0]
    cal = calibration.Calibration(
        chip=result.chip.name,
        device_kind=device.device_kind,
        kinds=kinds,
        jax=jax.__version__,
        notes=(
            f"benchmarks/device.py on {len(jax.devices())} × {device.device_kind}",
            f"configs/pi1.py at {sizes.prompts} prompts × {sizes.n} samples, "
            f"prompt bucket {sizes.bucket}, max_new_tokens {sizes.new_tokens}, "
            "random weights, no stop token (every response full length, as "
            "the plan assumes); median of "
            f"{sizes.repeats} after a warm-up",
            "sampling: engine.rollout (prepare + prefill + decode loop, to the "
            "host); logprobs: the reference pass; update: the train step; both "
            "on the batch packed from the rollout",
        ),
    )
    path = os.path.join(out, "calibration.json")
    calibration.write(cal, path)
    results.put(
        "calibration",
        {"path": path, **{k: cal.factor(k) for k in kinds}},
    )
    log(
        "calibration (measured / roofline): "
        + ", ".join(f"{k} {cal.factor(k):.2f}" for k in kinds)
        + f" -> {path}"
    )
    return path


# --------------------------------------------------------------- length mix
def mix_part(results, run, model, state, reference, sizes, chip, tiny, log):
    """Part 5: the log-prob pass and train step on π1's length mix, packed."""
    mesh = run.mesh
    mix_config = reduced_config(sizes, tiny, sizes.mix_new_tokens)
    cfg = build.learner_config(mix_config, mesh, model)
    lengths, source = response_lengths(sizes.prompts, sizes.n, sizes.mix_new_tokens)
    rng = np.random.default_rng(1)
    prompt = rng.integers(1, model.vocab_size, sizes.prompt_len).astype(np.int32)
    responses = [rng.integers(1, model.vocab_size, t).astype(np.int32) for t in lengths]
    host = packing.pack(
        [prompt] * len(lengths),
        responses,
        rng.normal(size=len(lengths)).astype(np.float32),
        agg=cfg.agg,
        limit=build.learner_width(mix_config),
        max_tokens=cfg.max_tokens_per_micro_batch,
        divisor=sharding.batch_divisor(mesh),
    )
    batch = sharding.shard_batch(mesh, jax.tree.map(sharding.process_rows, host))
    logprobs_fn = learner.jit_logprobs(model, cfg, mesh)
    out = {}

    def ref_pass():
        out["ref_logp"] = jax.block_until_ready(logprobs_fn(reference, batch))

    logp_s, logp_warm, _ = timed(ref_pass, sizes.repeats)
    batch["ref_logp"] = out["ref_logp"]
    train_step = learner.jit_train_step(model, cfg, run.tx, mesh)
    holder = [state]

    def update():
        new, metrics = train_step(holder[0], batch)
        holder[0] = new
        jax.block_until_ready((new, metrics))

    update_s, update_warm, _ = timed(update, sizes.repeats)
    sequences = lengths + sizes.prompt_len
    flops = model_flops(model, sequences)
    mfu = flops / (update_s * mesh.size * chip.bf16_flops_per_s)
    figures = {
        "what": "the reference log-prob pass and the train step on the step's "
        "sequences at the mix's lengths (random tokens), packed by "
        "packing.pack with pi1's micro-batch token budget",
        "lengths_from": source,
        "response_median": float(np.median(lengths)),
        "response_max": int(lengths.max()),
        "real_tokens": int(sequences.sum()),
        "batch_shape": list(host["tokens"].shape),
        "token_efficiency": packing.token_efficiency(host),
        "logprobs_s": logp_s,
        "logprobs_warmup_s": logp_warm,
        "update_s": update_s,
        "update_warmup_s": update_warm,
        "real_tokens_per_s": float(sequences.sum()) / update_s,
        "model_flops": flops,
        "mfu_real_tokens": mfu,
    }
    results.put("mix", figures)
    log(
        f"length mix ({source}; median {figures['response_median']:.0f}, max "
        f"{figures['response_max']}): packed {host['tokens'].shape}, token "
        f"efficiency {100 * figures['token_efficiency']:.0f}%; log-probs "
        f"{logp_s:.3f} s, train step {update_s:.3f} s, MFU on real tokens "
        f"{100 * mfu:.1f}%"
    )
    return holder[0]


# -------------------------------------------------------------------- main
def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for the JSON files")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for CPU")
    parser.add_argument(
        "--budget_s",
        type=float,
        default=None,
        help=f"seconds the parts may take (default {BUDGET_S:.0f}; --tiny: no limit)",
    )
    parser.add_argument("--new_tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--chip", default=None, help="a planning.chips key (default: the device's)"
    )
    parser.add_argument(
        "--skip", default="", help="parts to skip, comma-separated (decode, mix, ...)"
    )
    parser.add_argument("--verbose", action="store_true", help="plan progress")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Runs the parts (module docstring); returns device.json's contents."""
    args = parse(argv)
    sizes = TINY if args.tiny else ACCELERATOR
    if args.new_tokens:
        sizes = dataclasses.replace(sizes, new_tokens=args.new_tokens)
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    devices = jax.devices()
    if args.chip:
        chip = chips.CHIPS[args.chip]
    elif args.tiny:
        chip = TINY_CHIP
    elif devices[0].platform == "cpu":
        raise SystemExit(
            "no accelerator: jax sees only CPUs (install jax's GPU plugin, "
            'e.g. pip install -e ".[cuda]"), or pass --tiny'
        )
    else:
        chip = chips.chip_for(devices[0].device_kind)
    needs = {k: 0.0 for k in NEEDS_S} if args.tiny else NEEDS_S
    os.makedirs(args.out, exist_ok=True)
    budget = args.budget_s
    if budget is None:
        budget = math.inf if args.tiny else BUDGET_S
    results = Results(args.out, budget, needs)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    def log(line: str) -> None:
        print(f"[{results.elapsed():6.1f} s] {line}", flush=True)

    config = reduced_config(sizes, args.tiny)
    model = model_for(config, args.tiny)
    results.data.update(
        device_kind=devices[0].device_kind,
        devices=len(devices),
        platform=devices[0].platform,
        jax=jax.__version__,
        chip=dataclasses.asdict(chip),
        sizes=dataclasses.asdict(sizes),
        budget_s=None if math.isinf(budget) else budget,
    )
    log(
        f"{len(devices)} × {devices[0].device_kind} as {chip.name} "
        f"({chip.hbm_bytes_per_s / GB:.0f} GB/s, "
        f"{chip.bf16_flops_per_s / 1e12:.0f} TFLOP/s); model "
        f"{decoder.count_params(decoder.abstract_params(model)) / 1e6:.1f}M "
        f"parameters, {model.dtype} compute"
    )
    if not results.allows("setup"):
        for part in ("decode", "sampling", "plan", "mix"):
            results.skip(part, "no setup")
        return results.data

    # ---- setup: the run's objects (build.plan_run: what train.run makes),
    # random weights, the train state and the bf16 reference, as train.run.
    run = build.plan_run(config, devices, 0, model)
    shardings = sharding.tree_shardings(decoder.abstract_params(model), run.mesh)
    params = build.initial_params(config, model, "", shardings)
    state = learner.init_train_state(model, run.tx, run.mesh, params=params)
    reference = sampling.compute_dtype_params(model, params)
    del params
    jax.block_until_ready((state, reference))
    results.put("setup", {"memory": memory(devices[0])})

    if "decode" in skip:
        results.skip("decode", "--skip")
    elif results.allows("decode"):
        decode_part(results, run, model, state, sizes, chip, log)

    measured = {}
    if "rl_step" in skip:
        results.skip("sampling", "--skip")
    elif results.allows("sampling"):
        measured, state = rl_step_part(
            results, run, config, model, state, reference, sizes, chip, log
        )

    if "plan" in skip:
        results.skip("plan", "--skip")
    elif results.allows("plan"):
        result = plan_part(results, config, model, chip, measured, args.verbose, log)
        write_calibration(results, result, measured, sizes, args.out, log)

    if "mix" in skip:
        results.skip("mix", "--skip")
    elif results.allows("mix"):
        state = mix_part(
            results, run, model, state, reference, sizes, chip, args.tiny, log
        )
    print(summary(results.data), flush=True)
    log(f"done: {os.path.join(args.out, 'device.json')}")
    return results.data


def summary(data: dict) -> str:
    """device.json's figures as one table (what ran; what was skipped)."""
    parts, lines = data["parts"], [""]
    lines.append(f"{data['devices']} × {data['device_kind']} (jax {data['jax']})")
    if "decode" in parts:
        lines.append(
            "decode step   slots   ms/step    tokens/s  roofline ms  efficiency"
        )
        for r in parts["decode"]["rows"]:
            lines.append(
                f"{'':12}{r['slots']:7d}{1e3 * r['step_s']:10.3f}"
                f"{r['tokens_per_s']:12.0f}{1e3 * r['roofline_s']:13.3f}"
                f"{100 * r['efficiency']:11.1f}%"
            )
    planned = parts.get("plan", {}).get("parts", {})
    step = parts.get("rl_step", {})
    if step or planned:
        lines.append("RL step part   measured s   roofline s   measured/roofline")
        for kind in PLAN_PARTS:
            measured = step.get(kind, {}).get("seconds")
            roofline = planned.get(kind, {}).get("roofline_s")
            m = f"{measured:12.3f}" if measured else f"{'-':>12}"
            r = f"{roofline:13.4f}" if roofline else f"{'-':>13}"
            ratio = f"{measured / roofline:14.2f}×" if measured and roofline else ""
            lines.append(f"{kind:<14}{m}{r}{ratio}")
    if "update" in step:
        u = step["update"]
        lines.append(
            f"learner MFU {100 * u['mfu']:.1f}% (planned widest rows), "
            f"{100 * u['mfu_real_tokens']:.1f}% (real tokens)"
        )
    if "plan" in parts:
        p = parts["plan"]
        measured = p.get("measured_peak_bytes")
        lines.append(
            f"peak memory per chip: predicted {p['predicted_peak_bytes'] / GB:.2f} GB"
            + (f", measured {measured / GB:.2f} GB" if measured else "")
        )
    if "mix" in parts:
        m = parts["mix"]
        lines.append(
            f"length mix: batch {m['batch_shape']}, token efficiency "
            f"{100 * m['token_efficiency']:.0f}%, log-probs {m['logprobs_s']:.3f} s, "
            f"train step {m['update_s']:.3f} s, MFU (real tokens) "
            f"{100 * m['mfu_real_tokens']:.1f}%"
        )
    lines += [f"skipped {k}: {why}" for k, why in data["skipped"].items()]
    lines += [f"note: {n}" for n in data["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

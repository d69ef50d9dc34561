"""A plan's figures and its report: what coexists in each phase of a step
(PPO: the critic's train state included) against a chip's HBM, the roofline
time of each part (a lower bound), every response at max_new_tokens and at
a response-length mix (`StepAtMix`), optionally scaled into expected times
by a calibration, the learner's model FLOPs over its roofline FLOPs-time,
the decode step's HBM efficiency, the decode layouts compared
(`planning.layouts`), and the table the CLI prints."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from rlvr_jax import learner, sharding
from rlvr_jax.model import decoder
from rlvr_jax.planning import collectives as collectives_lib
from rlvr_jax.planning import layouts as layouts_lib
from rlvr_jax.planning import mix as mix_lib
from rlvr_jax.planning import programs as programs_lib
from rlvr_jax.planning.calibration import Calibration
from rlvr_jax.planning.chips import GB, Chip
from rlvr_jax.planning.programs import Program, Run, StepShapes


@dataclasses.dataclass
class StepAtMix:
    """The step priced at a response-length mix (`step_at_mix`).

    Attributes:
      source: the mix's name (`lengths.Mix.name`).
      times: roofline seconds per part, as `Plan.times`.
      run_seconds: the run's steps at these times + its first evaluation.
      decoding: the rollout replayed at the mix; at_max: at max_new_tokens.
      packed: the learner batch packed at the mix; widest_rows, widest_width:
        the widest batch's (the compiled programs').
      learner_fraction: packed token slots over the widest batch's.
      capped: drawn lengths cut to max_new_tokens.
      notes: how parts were counted.
    """

    source: str
    times: dict[str, float]
    run_seconds: float
    decoding: mix_lib.Decoding
    at_max: mix_lib.Decoding
    packed: mix_lib.Packed
    widest_rows: int
    widest_width: int
    learner_fraction: float
    capped: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def step_seconds(self) -> float:
        return sum(self.times.values())

    def to_json(self) -> dict:
        d, m, k = self.decoding, self.at_max, self.packed
        return {
            "source": self.source,
            "step_seconds": self.step_seconds,
            "run_seconds": self.run_seconds,
            "step_breakdown_seconds": self.times,
            "decode_steps": d.steps,
            "decode_steps_at_max": m.steps,
            "mean_attended_columns": d.mean_width,
            "mean_attended_columns_at_max": m.mean_width,
            "slot_efficiency": d.slot_efficiency,
            "generated_tokens": d.tokens,
            "packed_rows": k.rows,
            "packed_width": k.width,
            "micro_batches": k.micro_batches,
            "widest_rows": self.widest_rows,
            "widest_width": self.widest_width,
            "learner_fraction": self.learner_fraction,
            "capped": self.capped,
            "notes": self.notes,
        }


@dataclasses.dataclass
class Plan:
    """The plan of one run on one target (see `plan`)."""

    topology: str
    chip: Chip
    chips: int
    shapes: StepShapes
    steps: int  # train.steps
    hbm_bytes_per_chip: float
    programs: list[Program]
    phases: dict[str, int]  # phase -> resident bytes per chip
    times: dict[str, float]  # seconds per RL step by part
    run_seconds: float
    notes: list[str]
    overrides: dict[str, Any]
    largest: dict[str, int]
    mfu: float
    decode_efficiency: float
    reference_on_host: bool = False  # train.reference_on_host (see resident_phases)
    attention_kernel: str = "xla"  # the learner's (LearnerConfig.attention_kernel)
    reference: bool = True  # the KL reference policy is kept (Run.reference)
    critic: bool = False  # PPO: the critic's train state is resident (Run.critic)
    mix: StepAtMix | None = None  # the step at a response-length mix
    calibration: Calibration | None = None  # measured over roofline, this chip
    platform: str = "tpu"  # the devices' platform: 'tpu', 'gpu' (or 'cpu')

    @property
    def peak_bytes_per_chip(self) -> int:
        return max(self.phases.values())

    @property
    def fits(self) -> bool:
        return self.peak_bytes_per_chip <= self.hbm_bytes_per_chip

    @property
    def step_seconds(self) -> float:
        return sum(self.times.values())

    def program(self, name: str) -> Program:
        return next(p for p in self.programs if p.name == name)

    @property
    def generated_tokens_per_s_per_chip(self) -> float | None:
        """Tokens the step's rollout generates at the mix over its sampling
        roofline time, per chip (None: no mix): a rate no run beats."""
        if self.mix is None or not self.mix.times.get("sampling"):
            return None
        tokens = self.mix.decoding.tokens
        return tokens / self.mix.times["sampling"] / self.chips

    def verdict(self) -> str:
        if self.fits:
            return "fits"
        over = (self.peak_bytes_per_chip - self.hbm_bytes_per_chip) / GB
        return f"does not fit by {over:.2f} GB"

    def expected_json(self) -> dict | None:
        """Calibrated expected seconds (None: no calibration)."""
        c = self.calibration
        if c is None:
            return None
        out = {
            "device_kind": c.device_kind,
            "chip": c.chip,
            "step_breakdown_seconds": c.expected(self.times),
        }
        if self.mix is not None:
            out["mix_step_breakdown_seconds"] = c.expected(self.mix.times)
        return out

    def to_json(self) -> dict:
        return {
            "topology": self.topology,
            "platform": self.platform,
            "chip": self.chip.name,
            "chips": self.chips,
            "hbm_bytes_per_chip": self.hbm_bytes_per_chip,
            "fits": self.fits,
            "peak_bytes_per_chip": self.peak_bytes_per_chip,
            "step_seconds": self.step_seconds,
            "run_seconds": self.run_seconds,
            "step_breakdown_seconds": self.times,
            "phases": self.phases,
            "reference": self.reference,
            "critic": self.critic,
            "largest": self.largest,
            "suggested_overrides": self.overrides,
            "learner_mfu": self.mfu,  # model FLOPs / roofline FLOPs-time
            "learner_model_flops_over_roofline": self.mfu,
            "decode_hbm_efficiency": self.decode_efficiency,
            "generated_tokens_per_s_per_chip": self.generated_tokens_per_s_per_chip,
            "times_are": "roofline (lower bound)",
            "mix": None if self.mix is None else self.mix.to_json(),
            "expected": self.expected_json(),
            "notes": self.notes,
            "programs": [
                {
                    "name": p.name,
                    "calls_per_step": p.calls,
                    "arguments": p.arguments,
                    "outputs": p.outputs,
                    "alias": p.alias,
                    "temp": p.temp,
                    "total": p.total,
                    "flops": p.flops,
                    "hbm_bytes": p.hbm_bytes,
                    "seconds": p.seconds,
                }
                for p in self.programs
            ],
        }


def resident_phases(run: Run, programs: list[Program]) -> dict[str, int]:
    """Bytes per chip that coexist in each phase of a step.

    Always resident: the train state, PPO's critic's train state (params
    and AdamW moments, beside the actor's the whole step) and the reference
    weights (with `train.reference_on_host`, the reference only in its own
    pass). Each phase adds what its program holds beyond those (its other
    arguments, outputs and temporaries); sampling also holds the prepared
    sampler weights, which are the arguments of `sample`.
    """
    model = run.model
    state = sharding.bytes_per_device(
        learner.sharded_abstract_state(model, run.tx, run.mesh)
    ) + programs_lib.critic_state_bytes(run)
    ref = programs_lib.reference_params(run, model)
    ref_bytes = 0 if ref is None else sharding.bytes_per_device(ref)
    on_host = ref_bytes if run.reference_on_host else 0
    return {
        p.name: state
        + ref_bytes
        - on_host
        + p.total
        - p.resident_args
        + (on_host if p.name == "ref_logprobs" else 0)
        for p in programs
        if p.calls
    }


def step_times(run: Run, programs: list[Program]) -> dict[str, float]:
    """Roofline seconds per RL step by part: sampling (the weights' prepare
    and the rollout), the log-prob passes (reference; PPO's π_old with the KL
    in the reward), PPO's critic (its value pass and its update: an entry
    only for a run with a critic), the actor's update, and evaluation
    (per step: its calls over eval_every)."""
    by_name = {p.name: p for p in programs}
    times = {
        "sampling": by_name["prepare"].seconds
        + by_name["sample"].seconds * by_name["sample"].calls,
        "logprob_passes": sum(
            by_name[n].seconds for n in ("ref_logprobs", "old_logprobs") if n in by_name
        ),
    }
    if "critic_step" in by_name:
        times["critic"] = (
            by_name["critic_values"].seconds + by_name["critic_step"].seconds
        )
    times["update"] = by_name["train_step"].seconds
    times["evaluation"] = 0.0
    if "eval_sample" in by_name:
        e = by_name["eval_sample"]
        times["evaluation"] = (
            by_name["prepare"].seconds / run.eval_every + e.seconds * e.calls
        )
    return times


def step_at_mix(
    run: Run,
    programs: list[Program],
    chip: Chip,
    lengths_r: np.ndarray,
    *,
    source: str,
    steps: int,
    initial_eval: float,
    capped: int = 0,
    eval_lengths_r: np.ndarray | None = None,
    prompt_tokens: int | None = None,
    buckets: tuple[int, ...] | None = None,
) -> StepAtMix:
    """The step's roofline times with the rollout's responses `lengths_r`
    long (R = train.batch_size × n, prompt-major) instead of all at
    max_new_tokens, from the programs compiled at the widest shapes.

    Sampling: the rollout's decode steps and their widths, replayed
    (`mix.decoding`), priced by the decode step's line. The learner's
    passes (reference and π_old log-probs, PPO's critic values and update,
    the train step's micro-batches): the prompt + response sequences packed
    as the learner packs them (`mix.packed`), each pass scaled by the packed
    token slots over the widest batch's (`mix.learner_fraction`; cost is
    linear in rows at a fixed width); the optimizer updates do not scale.
    Evaluation: its call's rows at `eval_lengths_r` (one greedy response
    per problem) replayed and priced as the rollout is; None: at max.
    Prompts: `prompt_tokens` long (default: the widest bucket), padded to
    their bucket among `buckets` where a slot cache pads them.
    """
    sh = run.shapes
    by_name = {p.name: p for p in programs}
    sample = by_name["sample"]
    prompt = prompt_tokens or sh.prompt_width
    decoding = sample.rollout.replay(lengths_r, prompt, buckets)
    at_max = sample.rollout.replay()
    # Prompts at the bucket's width unless told: an upper bound (real
    # prompts are packed without their padding).
    packed = mix_lib.packed(
        prompt + np.asarray(lengths_r, np.int64),
        sh.learner_width,
        run.learner.max_tokens_per_micro_batch,
        sharding.batch_divisor(run.mesh),
    )
    fraction = mix_lib.learner_fraction(packed, sh.learner_rows, sh.learner_width)

    def scaled(p: Program) -> Program:
        if p.rollout is not None and p.name == "sample":
            flops, nbytes = p.rollout.at(decoding)
        elif p.rollout is not None and p.name == "eval_sample":
            if eval_lengths_r is None:
                return p
            flops, nbytes = p.rollout.at(
                p.rollout.replay(eval_lengths_r, prompt_tokens, buckets)
            )
        elif p.name in LEARNER_PASSES:
            flops = p.fixed_flops + fraction * (p.flops - p.fixed_flops)
            nbytes = p.fixed_bytes + fraction * (p.hbm_bytes - p.fixed_bytes)
        else:
            return p
        seconds = programs_lib.roofline(flops, nbytes, chip)
        return dataclasses.replace(p, flops=flops, hbm_bytes=nbytes, seconds=seconds)

    times = step_times(run, [scaled(p) for p in programs])
    notes = [
        f"at the mix: {decoding.steps} decode steps (all at max: {at_max.steps}) "
        f"over {decoding.slots} slots, attending {decoding.mean_width:.0f} cache "
        f"columns on average (at max: {at_max.mean_width:.0f}); slot efficiency "
        f"{decoding.slot_efficiency:.2f}",
        f"at the mix: the learner packs {packed.sequences} sequences into "
        f"{packed.rows} rows of {packed.width} ({packed.micro_batches} "
        f"micro-batches; the widest batch: {sh.learner_rows} rows of "
        f"{sh.learner_width}): its passes cost {100 * fraction:.0f}% of the "
        "widest batch's ("
        + (
            f"prompts of {prompt_tokens} tokens"
            if prompt_tokens
            else "prompts counted at the bucket width, an upper bound"
        )
        + ")",
    ]
    if capped:
        notes.append(
            f"at the mix: {capped} of {len(lengths_r)} drawn lengths were above "
            f"max_new_tokens ({run.settings.max_new_tokens}) and capped there"
        )
    if decoding.preemptions or sample.rollout.paging is not None:
        paging = sample.rollout.paging
        notes.append(
            f"at the mix: paged KV cache, {paging.pages} pages of {paging.page} "
            f"tokens per chip; {decoding.mean_live:.0f} rows in flight on "
            f"average (all at max: {at_max.mean_live:.0f}), "
            f"{decoding.preemptions} preemptions on the busiest chip "
            f"(all at max: {at_max.preemptions}); decode attention "
            + (
                "reads each live row's own pages (the Pallas kernel): the "
                "width above is the live columns per slot"
                if sample.rollout.kernel
                else "reads blocks up to the longest live row (pure JAX)"
            )
        )
    if times.get("evaluation"):
        notes.append(
            "at the mix: evaluation at eval.max_new_tokens for every response "
            "(no evaluation lengths given)"
            if eval_lengths_r is None
            else f"at the mix: evaluation responses drawn from the same mix "
            f"(one per problem, capped at eval.max_new_tokens: "
            f"{int(np.sum(eval_lengths_r))} tokens per call)"
        )
    return StepAtMix(
        source=source,
        times=times,
        run_seconds=steps * sum(times.values())
        + (
            times["evaluation"] * run.eval_every
            if eval_lengths_r is not None and run.eval_every
            else initial_eval
        ),
        decoding=decoding,
        at_max=at_max,
        packed=packed,
        widest_rows=sh.learner_rows,
        widest_width=sh.learner_width,
        learner_fraction=fraction,
        capped=capped,
        notes=notes,
    )


# Programs whose cost grows with the learner batch's rows.
LEARNER_PASSES = (
    "ref_logprobs",
    "old_logprobs",
    "critic_values",
    "critic_step",
    "train_step",
)


def learner_mfu(run: Run, train: Program, chip: Chip) -> float:
    """Model FLOPs of the train step over its roofline time × the chips' peak
    (not a measured MFU: the time is a lower bound, so this is an upper one).

    Model FLOPs as in `benchmarks/learner.py` (PaLM, appendix B): 6·N per
    token for the matmuls (a tied embedding counted once, as the head) plus
    12·layers·heads·head_dim·T for attention; recomputation is not counted.
    """
    m = run.model
    n = decoder.count_params(decoder.abstract_params(m))
    if not m.tie_embeddings:
        n -= m.vocab_size * m.d_model  # the lookup table does no matmul
    t = run.shapes.learner_width
    per_token = 6 * n + 12 * m.n_layers * m.n_heads * m.head_dim * t
    flops = per_token * run.shapes.responses * t
    return flops / (train.seconds * run.mesh.size * chip.bf16_flops_per_s)


def decode_min_bytes(run: Run, slots: int, filled: int) -> float:
    """Least HBM bytes per chip a decode step must read: weights + filled cache.

    Weights: the compute-dtype weights once (their per-chip share when the
    decode program keeps them sharded is not assumed: the whole copy counts,
    as each chip multiplies its rows by all of them). Cache: this chip's share
    of `slots` rows of `filled` columns, keys and values of every layer.
    """
    m = run.model
    itemsize = jnp.dtype(m.dtype).itemsize
    weights = decoder.count_params(decoder.abstract_params(m)) * itemsize
    rows = slots / sharding.batch_divisor(run.mesh)
    cache_item = jnp.dtype(run.settings.cache_dtype).itemsize
    cache = rows * filled * m.n_layers * 2 * m.n_kv_heads * m.head_dim * cache_item
    return weights + cache


def decode_efficiency(run: Run, step: Program) -> float:
    """The least bytes of the costed decode step (`decode_min_bytes` at the
    width it was compiled at, `programs.line_widths`) over the bytes its
    compiled program moves: 1 when it reads the weights and the filled cache
    once and nothing else."""
    filled = programs_lib.line_widths(run, run.shapes.sample, run.settings)[0]
    least = decode_min_bytes(run, run.shapes.sample.slots, filled)
    return least / step.hbm_bytes


def format_times(p: Plan) -> list[str]:
    """The step's times by part: roofline at the mix (when there is one) and
    all at max_new_tokens, and with a calibration the expected times."""
    columns = []  # (title, {part: seconds | None}, run seconds | None)
    if p.mix is not None:
        columns.append(("roofline, mix", p.mix.times, p.mix.run_seconds))
    columns.append(("roofline, all max", p.times, p.run_seconds))
    cal = p.calibration
    if cal is not None:
        for title, times, run in list(columns):
            expected = cal.expected(times)
            ratio = None
            if all(v is not None for v in expected.values()) and sum(times.values()):
                ratio = sum(expected.values()) / sum(times.values())
            columns.append(
                (
                    "expected" + title.partition(",")[2],
                    expected,
                    None if ratio is None else run * ratio,
                )
            )
    lines = ["estimated RL step, seconds: roofline (lower bound)"]
    if p.mix is not None:
        lines.append(f"  mix: {p.mix.source}")
    if cal is not None:
        lines.append(
            f"  expected (calibrated on {cal.device_kind}): the roofline × "
            "measured/roofline of its kind"
        )
    width = max(18, *(len(t) + 2 for t, _, _ in columns))
    lines.append(f"  {'part':<18}" + "".join(f"{t:>{width}}" for t, _, _ in columns))

    def cell(x):
        return f"{'—':>{width}}" if x is None else f"{x:>{width}.1f}"

    for part in p.times:
        lines.append(f"  {part:<18}" + "".join(cell(c[1].get(part)) for c in columns))
    steps = []
    for _, times, _ in columns:
        values = list(times.values())
        steps.append(None if None in values else sum(values))
    lines.append(f"  {'step':<18}" + "".join(cell(s) for s in steps))
    lines.append(
        f"  {'run hours':<18}"
        + "".join(cell(None if r is None else r / 3600) for _, _, r in columns)
    )
    lines.append(f"  (run: {p.steps} steps + evaluation)")
    return lines


def _gb(x: float) -> str:
    return f"{x / GB:7.2f}"


def decode_layouts(p: Plan) -> list:
    """The compared decode layouts of the training rollout ([] when the plan
    did not cost them)."""
    step = next((q for q in p.programs if q.name == "sample.decode_step"), None)
    return [] if step is None or not step.layouts else step.layouts


def format_layouts(p: Plan) -> list[str]:
    """The "decode layouts" table: per layout, per chip and decode step (at
    the mean fill), its weights, HBM bytes, collectives and roofline, the
    sampling phase it would need, and which one the run uses."""
    found = decode_layouts(p)
    if not found:
        return []
    sample_phase = p.phases.get("sample", 0)
    phases = layouts_lib.sampling_phase(found, sample_phase)
    best = layouts_lib.fastest_fitting(found, sample_phase, p.hbm_bytes_per_chip)
    ici = collectives_lib.ICI_BYTES_PER_S.get(p.chip.name, 0.0)
    lines = [
        "",
        "decode layouts (sample.decode_step at the mean fill, per chip; roofline: "
        f"HBM/FLOPs + collectives at {ici / GB:.0f} GB/s ICI + "
        f"{collectives_lib.LATENCY_S * 1e6:.0f} µs each)",
        "layout      weights GB  step HBM GB  coll. MB  colls  step ms  sampling GB",
    ]
    for x in found:
        if x.error:
            lines.append(f"  {x.name:<10}not compiled: {x.error}")
            continue
        phase = phases[x.name]
        verdict = "fits" if phase <= p.hbm_bytes_per_chip else "over"
        mark = []
        if x.used:
            mark.append("the run's")
        if best is not None and x.name == best.name:
            mark.append("fastest that fits")
        lines.append(
            f"  {x.name:<10}{x.weight_bytes / GB:10.2f}  {x.step_bytes / GB:11.3f}  "
            f"{x.collectives.operand_bytes / 1e6:8.1f}  {x.collectives.count:5d}  "
            f"{x.seconds * 1e3:7.2f}  {phase / GB:7.2f} {verdict}"
            + (f"  <- {', '.join(mark)}" if mark else "")
        )
    used = next((x for x in found if x.used), None)
    if best is not None and used is not None and best.name != used.name:
        lines.append(
            f"  faster: --config.rollout.decode_mesh={best.name} "
            f"({used.seconds * 1e3:.2f} -> {best.seconds * 1e3:.2f} ms a step)"
        )
    return lines


def format_plan(p: Plan) -> str:
    """The plan as the CLI prints it."""
    gpu = p.platform == "gpu"
    lines = [
        f"plan for {p.topology}: {p.chips} × {p.chip.name}{' GPU' if gpu else ''} "
        f"({p.hbm_bytes_per_chip / GB:.2f} GB HBM, "
        f"{p.chip.hbm_bytes_per_s / GB:.0f} GB/s, "
        f"{p.chip.bf16_flops_per_s / 1e12:.0f} TFLOP/s bf16 per "
        f"{'GPU' if gpu else 'chip'})",
        "",
        "per chip, per call   args GB    out GB   temp GB  total GB"
        "     TFLOP     HBM GB   roofline s  calls/step",
    ]
    for q in p.programs:
        lines.append(
            f"{q.name:<20}{_gb(q.arguments)}  {_gb(q.outputs)}  {_gb(q.temp)}  "
            f"{_gb(q.total)}  {q.flops / 1e12:8.2f}  {q.hbm_bytes / GB:9.1f}  "
            f"{q.seconds:11.3f}  {q.calls:10.3g}"
        )
    resident = ["train state"]
    if p.critic:
        resident.append("critic's train state")
    if p.reference:
        resident.append(
            "the reference in its own pass only" if p.reference_on_host else "reference"
        )
    lines += [
        "",
        f"resident per chip by phase ({' + '.join(resident)} + the phase's own)",
    ]
    for name, b in p.phases.items():
        lines.append(f"  {name:<18}{_gb(b)} GB")
    lines += [
        f"peak {p.peak_bytes_per_chip / GB:.2f} GB of "
        f"{p.hbm_bytes_per_chip / GB:.2f} GB: {p.verdict()}",
        "",
    ]
    layout_lines = format_layouts(p)
    if layout_lines:
        lines += layout_lines[1:] + [""]
    if p.step_seconds:
        lines += format_times(p)
        rate = p.generated_tokens_per_s_per_chip
        if rate is not None:
            lines.append(
                f"sampling at the mix: {p.mix.decoding.tokens} generated tokens, "
                f"{rate:.0f} tokens/s per {'GPU' if gpu else 'chip'} at the roofline"
            )
        lines.append(
            "learner model FLOPs / roofline FLOPs-time (not a measured MFU): "
            f"{100 * p.mfu:.0f}%; decode HBM-roofline efficiency: "
            f"{100 * p.decode_efficiency:.0f}%"
        )
    else:
        lines.append("(cost programs not compiled: no time estimates)")
    if p.largest:
        lines.append(
            "largest sizes estimated to fit: "
            + ", ".join(f"{k}={v}" for k, v in p.largest.items())
        )
    if p.overrides:
        lines.append(
            "suggested overrides: "
            + " ".join(f"--config.{k}={v}" for k, v in p.overrides.items())
        )
    elif not p.fits:
        lines.append("suggested overrides: none found that fit")
    lines += [f"note: {n}" for n in p.notes]
    if p.mix is not None:
        lines += [f"note: {n}" for n in p.mix.notes]
    return "\n".join(lines)


def gpu_notes(nodes: int, gpus_per_node: int) -> list[str]:
    """What a GPU plan models and what it does not (the report's notes)."""
    notes = [
        "GPU: compiled by XLA:GPU for the GPU's target config without a "
        "device (Triton GEMM tiles at the compiler's defaults: no autotuning); "
        "FLOPs are the compiled HLO's matrix products, loops at their trip "
        "counts; the roofline takes the dense bf16 peak and HBM bandwidth",
        "GPU: memory is against the whole HBM with JAX's preallocation off "
        "(XLA_PYTHON_CLIENT_PREALLOCATE=false, as launch/gpu.sh sets; the "
        "default preallocates 75%); the step's roofline prices no NVLink "
        "traffic",
    ]
    if nodes > 1:
        notes.append(
            f"GPU: {nodes} nodes of {gpus_per_node} compiled as one mesh of "
            f"{nodes * gpus_per_node}; traffic between nodes is not priced"
        )
    return notes

"""A plan's figures and its report: what coexists in each phase of a step
(PPO: the critic's train state included) against a chip's HBM, the roofline
time of each part, the learner's MFU, the decode step's HBM efficiency, and
the table the CLI prints."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from rlvr_jax import learner, sharding
from rlvr_jax.model import decoder
from rlvr_jax.planning import programs as programs_lib
from rlvr_jax.planning.chips import GB, Chip
from rlvr_jax.planning.programs import Program, Run, StepShapes


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

    def verdict(self) -> str:
        if self.fits:
            return "fits"
        over = (self.peak_bytes_per_chip - self.hbm_bytes_per_chip) / GB
        return f"does not fit by {over:.2f} GB"

    def to_json(self) -> dict:
        return {
            "topology": self.topology,
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
            "learner_mfu": self.mfu,
            "decode_hbm_efficiency": self.decode_efficiency,
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


def learner_mfu(run: Run, train: Program, chip: Chip) -> float:
    """Model FLOPs of the train step over its roofline time × the chips' peak.

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
    """The least bytes of the mean decode step (`decode_min_bytes` at
    `mean_fill`) over the bytes its compiled program moves: 1 when it reads
    the weights and the filled cache once and nothing else."""
    filled = programs_lib.mean_fill(run, run.settings)
    least = decode_min_bytes(run, run.shapes.sample.slots, filled)
    return least / step.hbm_bytes


def _gb(x: float) -> str:
    return f"{x / GB:7.2f}"


def format_plan(p: Plan) -> str:
    """The plan as the CLI prints it."""
    lines = [
        f"plan for {p.topology}: {p.chips} × {p.chip.name} "
        f"({p.hbm_bytes_per_chip / GB:.2f} GB HBM, "
        f"{p.chip.hbm_bytes_per_s / GB:.0f} GB/s, "
        f"{p.chip.bf16_flops_per_s / 1e12:.0f} TFLOP/s bf16 per chip)",
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
    if p.step_seconds:
        lines.append("estimated RL step (roofline, every response at max_new_tokens):")
        for part, seconds in p.times.items():
            lines.append(f"  {part:<18}{seconds:9.1f} s")
        lines.append(f"  {'step':<18}{p.step_seconds:9.1f} s")
        lines.append(
            f"  run ({p.steps} steps + evaluation): {p.run_seconds / 3600:.1f} h"
        )
        lines.append(
            f"learner MFU (model FLOPs over roofline time): {100 * p.mfu:.0f}%; "
            f"decode HBM-roofline efficiency: {100 * p.decode_efficiency:.0f}%"
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
    return "\n".join(lines)

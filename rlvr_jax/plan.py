"""Will it fit, how fast will it run: a run's programs compiled ahead of time.

    python -m rlvr_jax.plan --config=configs/pi1.py --topology=v5e:2x4 \\
        [--config.x=y ...] [--output=plan.json]

compiles, for a TPU topology (through `jax.experimental.topologies` and the
libtpu of the `[tpu]` extra, on any CPU host) or for the local devices when
no topology is given, every program one RL step runs, with the run's real
shapes and shardings:

  prepare        the sampler's weights (cast, laid out) from the train params
  sample         the step's rollout: every prompt prefilled once, then
                 continuous batching through rollout.chunk_size slots
  decode_step    one iteration of that loop (its cost is counted per step)
  ref_logprobs   the frozen reference policy's log-probs of the step's batch
  train_step     one optimizer update on the step's batch (micro-batched)
  eval_sample    prefill + greedy decode of one evaluation chunk

and reads the compiler's `memory_analysis()` (per chip: arguments, outputs,
temporaries), its `cost_analysis()` FLOPs, and the HBM bytes each program
moves, counted from its compiled HLO (`hbm_bytes`). From those it derives
what must coexist in each phase of a step against the chip's HBM, a roofline
time for each program, the step and run time, and the largest rollout chunk
and micro-batch that fit.

Trip counts. XLA's cost analysis counts a `while`/`scan` body once, whatever
its trip count. The figures here are therefore assembled from programs
without the step's outer loops (`depth_cost`, `sample_cost`,
`train_step_cost`): the layer scan (and the attention's query-block loop in
it) is unrolled in copies of a program at depth 1 and 2 (cost is linear in
depth, so depth L costs
c1 + (L - 1)(c2 - c1)); the learner's log-prob head runs as one chunk in
those copies (same FLOPs as the chunked scan); a micro-batched program is
costed as M scan bodies plus the optimizer update; the decode loop as the
sample program plus the rest of its ceil(R / S) × (max_new_tokens - 1)
decode steps. Sampling time is therefore the worst case, every response
running to `max_new_tokens`; the learner batch is the widest one (largest
prompt bucket + max_new_tokens). Loops that remain in those programs (the
sampler's row-by-row cache writes) are counted by their trip count in the
bytes (`hbm_bytes`), once in the FLOPs.

On TPU the cost programs are compiled without windowed-einsum loops
(`cost_run`): XLA's SPMD partitioner turns large sharded matmuls into such
loops, whose bodies the cost model would count once. The learner's flash
attention kernel (rlvr_jax/flash.py) brings its forward's FLOPs to XLA as
an estimate; its backward kernels have none, so the planner adds theirs
(`kernel_flops`).

Memory figures are those of the full programs as compiled, per chip.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import decoding, grpo, packing, scheduler
from rlvr_jax import model as model_lib
from rlvr_jax import sampler as sampler_lib
from rlvr_jax import sharding as sharding_lib

GB = 1e9


# ----------------------------------------------------------------- chips
@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures of an accelerator (vendor data sheets).

    Attributes:
      name: short name (the topology prefix for TPUs).
      hbm_bytes: memory per chip.
      hbm_bytes_per_s: memory bandwidth per chip.
      bf16_flops_per_s: dense bf16 matmul peak per chip.
    """

    name: str
    hbm_bytes: float
    hbm_bytes_per_s: float
    bf16_flops_per_s: float


GiB = 2**30
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 1228e9, 275e12),
    "v5e": Chip("v5e", 16 * GiB, 819e9, 197e12),
    "v5p": Chip("v5p", 95 * GiB, 2765e9, 459e12),
    "v6e": Chip("v6e", 32 * GiB, 1640e9, 918e12),
    "a100": Chip("a100", 80 * GiB, 2039e9, 312e12),
    "h100": Chip("h100", 80 * GiB, 3350e9, 989e12),
    "h200": Chip("h200", 141e9, 4800e9, 989e12),
}
# device_kind substrings (lower case) of local devices -> CHIPS key; the
# first match wins, so "v5 lite" precedes "v5".
_KINDS = (
    ("v5 lite", "v5e"),
    ("v5e", "v5e"),
    ("v6 lite", "v6e"),
    ("v6e", "v6e"),
    ("v5p", "v5p"),
    ("v5", "v5p"),
    ("v4", "v4"),
    ("a100", "a100"),
    ("h100", "h100"),
    ("h200", "h200"),
)


def chip_for(device_kind: str) -> Chip:
    """The `Chip` of a `device.device_kind` string (ValueError if unknown)."""
    kind = device_kind.lower()
    for needle, name in _KINDS:
        if needle in kind:
            return CHIPS[name]
    raise ValueError(f"no chip specs for device kind {device_kind!r}")


@functools.cache
def topology_devices(topology: str) -> tuple:
    """The devices of a TPU topology such as 'v5e:2x4' (needs libtpu).

    These are compile-only devices: programs lowered on a mesh over them are
    compiled by the real TPU compiler on this host, and never run. Cached:
    every plan of a topology shares its device objects (and so its
    compiled programs).
    """
    from jax.experimental import topologies

    # libtpu looks for TPU VM metadata unless told it is not on one, and
    # takes a machine-wide lock unless told that other processes (another
    # plan, a test) may load it too: compiling needs no exclusive TPU.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # v4 and v5p chips hold two cores that JAX drives as one device
    # ("megacore"), as on a real slice; v5e and v6e chips have one core.
    megacore = topology.split(":")[0] in ("v4", "v5p")
    extra = {"chip_config_name": "megacore"} if megacore else {}
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topology, **extra
        )
    except Exception as e:  # noqa: BLE001 - libtpu raises several kinds
        raise ValueError(
            f"cannot describe TPU topology {topology!r} ({e}); install the "
            "`[tpu]` extra (libtpu) and pass e.g. v5e:2x4, v4:2x2x1, v6e:2x4"
        ) from e
    return tuple(desc.devices)


# --------------------------------------------------------------- programs
@dataclasses.dataclass
class Program:
    """One compiled program's per-chip figures.

    Attributes:
      name: see the module docstring.
      calls: times it runs per RL step (a fraction for evaluation).
      arguments, outputs, alias, temp: bytes per chip (`memory_analysis`);
        alias: output bytes that reuse donated argument buffers.
      flops, hbm_bytes: per call, loop trip counts included.
      seconds: roofline time per call, max(flops / peak, bytes / bandwidth).
      resident_args: bytes of the arguments that are resident anyway
        (train state, reference weights), not added again to the phase.
    """

    name: str
    calls: float
    arguments: int
    outputs: int
    alias: int
    temp: int
    flops: float = 0.0
    hbm_bytes: float = 0.0
    seconds: float = 0.0
    resident_args: int = 0
    oom: bool = False  # the compiler refused it: temp is what it needed

    @property
    def total(self) -> int:
        return self.arguments + self.outputs + self.temp - self.alias


class OutOfMemory:
    """Stands in for a program the compiler refused for want of HBM.

    XLA:TPU will not compile a program whose own buffers exceed a chip's
    memory; its message says how much it needed, which becomes the
    program's temporaries (arguments and outputs unknown: 0).
    """

    def __init__(self, message: str):
        self.message = message
        used = re.search(r"Used ([\d.]+)([KMGT]?) of", message)
        found = used or re.search(r"temporaries \(([\d.]+)([KMGT]?)\)", message)
        if found:
            scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
            self.needed = int(float(found.group(1)) * scale[found.group(2)])
        else:
            self.needed = 2**50  # unparsed: certainly too much

    def memory_analysis(self):
        return types.SimpleNamespace(
            argument_size_in_bytes=0,
            output_size_in_bytes=0,
            alias_size_in_bytes=0,
            temp_size_in_bytes=self.needed,
        )

    def cost_analysis(self):
        return {}


# Programs compiled in this process, by their text and devices: a re-plan
# (the search for sizes that fit, a test) recompiles only what changed.
_COMPILED: dict = {}


# TPU options that keep XLA's SPMD partitioner from turning sharded matmuls
# into windowed-einsum loops. The cost model counts a loop body once, so with
# those loops one π1 learner layer (a 16-row micro-step on v5e:2x4) counts
# 1.78 TFLOP per chip where the same layer without them counts 3.14. The memory
# programs keep the defaults (they are what the run compiles); the cost
# programs of a TPU target are compiled with these (`cost_run`).
NO_WINDOWED_EINSUM = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}


def cost_run(run: Run) -> Run:
    """`run` as its cost programs are compiled: on TPU without windowed
    einsums (`NO_WINDOWED_EINSUM`), whose loops the cost model would count
    once; elsewhere unchanged (the options are TPU flags)."""
    if run.mesh.devices.flat[0].platform != "tpu":
        return run
    return dataclasses.replace(
        run, compiler_options={**(run.compiler_options or {}), **NO_WINDOWED_EINSUM}
    )


def compile_key(lowered, run: Run) -> tuple:
    """What a compiled program is cached under: the same StableHLO for the
    same devices with the same compiler options is the same program."""
    devices = tuple((d.id, d.device_kind) for d in run.mesh.devices.flat)
    options = tuple(sorted((run.compiler_options or {}).items()))
    return lowered.as_text(), devices, options


def compile_or_oom(lowered, run: Run):
    """`lowered.compile()` (with `run.compiler_options`), or an `OutOfMemory`
    when the chip is too small."""
    key = compile_key(lowered, run)
    if key in _COMPILED:
        return _COMPILED[key]
    try:
        compiled = lowered.compile(compiler_options=run.compiler_options)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        if "memory space vmem" in str(e) or "ScopedVmemOom" in str(e):
            # On-chip memory, not HBM: no smaller batch helps, and its size
            # is no HBM figure.
            raise ValueError(
                "a kernel's tiles do not fit this chip's on-chip memory "
                "(with model.attention=flash: use auto or xla): "
                + str(e).splitlines()[0]
            ) from e
        compiled = OutOfMemory(str(e))
    _COMPILED[key] = compiled
    return compiled


def memory(compiled) -> dict[str, int]:
    """Per-chip bytes from a compiled program's `memory_analysis()`."""
    m = compiled.memory_analysis()
    return dict(
        arguments=int(m.argument_size_in_bytes),
        outputs=int(m.output_size_in_bytes),
        alias=int(m.alias_size_in_bytes),
        temp=int(m.temp_size_in_bytes),
    )


def cost(compiled) -> tuple[float, float]:
    """(FLOPs, HBM bytes) per chip of one pass of a compiled program.

    FLOPs are XLA's (`cost_analysis()`), which counts a loop body once,
    plus those of kernels XLA has no count for (`kernel_flops`).
    Bytes are counted from the compiled HLO (`hbm_bytes`): XLA's own
    "bytes accessed" sums every operand and output of every instruction
    wherever it lives, on-chip copies included, and no subtraction of those
    gives the HBM traffic (it went negative for a small train step).
    """
    c = compiled.cost_analysis()
    if isinstance(c, list):  # older jax returns one dict per program
        c = c[0]
    if not c:
        return 0.0, 0.0
    computations = _computations(compiled.as_text())  # parsed once for both
    flops = float(c.get("flops", 0.0)) + _kernel_flops(computations)
    return flops, _hbm_bytes(computations)


# FLOPs per (row, head, query, key, head-dim element) of the flash-attention
# backward kernels (`rlvr_jax.flash`), which carry no cost estimate: dK/dV
# recomputes Q·Kᵀ and dO·Vᵀ and forms Pᵀ·dO and dSᵀ·Q (4 products of 2
# FLOPs); dQ recomputes the same two and forms dS·K (3). The forward kernel's
# estimate (which XLA does count) is its reference's, 2 products, every
# tile counted as the XLA path computes them (the causal half included).
_KERNEL_PRODUCTS = {"flash_mha_bwd_dkv": 8, "flash_mha_bwd_dq": 6}


def kernel_flops(hlo: str) -> float:
    """FLOPs of the flash-attention backward kernels in a compiled program,
    each instruction once (from its operands: Q [B, N, T, H], K [B, N, S, H])."""
    return _kernel_flops(_computations(hlo))


def _kernel_flops(computations: dict) -> float:
    total = 0.0
    for ops in computations.values():
        shapes = {o.name: o.shape for o in ops}
        for op in ops:
            products = next(
                (n for k, n in _KERNEL_PRODUCTS.items() if op.name.startswith(k)),
                None,
            )
            if op.opcode != "custom-call" or products is None:
                continue
            (_, q), (_, k) = (
                _ARRAY.findall(shapes[name])[0][:2] for name in op.operands[:2]
            )
            b, n, t, h = (int(d) for d in q.split(","))
            total += products * b * n * t * int(k.split(",")[2]) * h
    return total


_ITEMSIZE = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4}
_ITEMSIZE.update({"bf16": 2, "f16": 2, "s16": 2, "u16": 2, "s8": 1, "u8": 1})
_ITEMSIZE.update({"pred": 1, "f8e4m3fn": 1, "f8e5m2": 1})
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\](\{[^}]*\})?")
# Instructions that move no bytes (or whose bytes their *-start counted).
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}
_FREE |= {"after-all", "partition-id", "replica-id", "opt-barrier"}
# In-place updates: opcode -> operand index of the update (the buffer,
# operand 0, is neither read nor rewritten whole).
_IN_PLACE = {"dynamic-update-slice": 1, "scatter": 2}
# Fusion-internal ops that read only part of a fused parameter.
_SLICING = {"dynamic-slice", "slice", "gather"}


def _arrays(shape: str) -> list[tuple[int, bool]]:
    """(bytes, in HBM) of each array of an HLO shape. An array lives in HBM
    unless its layout names another memory space (`S(1)` is on-chip VMEM)."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        if dtype in _ITEMSIZE:
            n = math.prod(int(d) for d in dims.split(",") if d)
            space = re.search(r"S\((\d+)\)", layout or "")
            out.append((n * _ITEMSIZE[dtype], space is None or space.group(1) == "0"))
    return out


def _hbm(shape: str) -> int:
    return sum(b for b, in_hbm in _arrays(shape) if in_hbm)


def _size(shape: str) -> int:
    return sum(b for b, _ in _arrays(shape))


def _instruction(line: str):
    """(name, shape, opcode, operand names, attributes) of an HLO text line,
    or None."""
    m = re.match(r"\s*(?:ROOT )?%(\S+) = ", line)
    if not m:
        return None
    rest, depth, cut = line[m.end() :], 0, 0
    for cut, ch in enumerate(rest):  # noqa: B007 - the shape ends at a space
        depth += (ch in "({[") - (ch in ")}]")  # outside brackets
        if ch == " " and depth == 0:
            break
    shape, tail = rest[:cut], rest[cut + 1 :]
    if "(" not in tail:
        return None
    start = tail.index("(")
    depth = 0
    for end in range(start, len(tail)):
        depth += (tail[end] == "(") - (tail[end] == ")")
        if depth == 0:
            break
    operands = re.findall(r"%([\w.\-]+)", tail[start:end])
    return m.group(1), shape, tail[:start].strip(), operands, tail[end:]


@dataclasses.dataclass(frozen=True)
class _Op:
    name: str
    shape: str
    opcode: str
    operands: list
    attributes: str
    root: bool
    parameter: int | None  # N of `parameter(N)`
    constant: int | None  # an integer scalar constant's value


def _computations(hlo: str) -> dict[str, list[_Op]]:
    """The instructions of each computation of an HLO text ('ENTRY': the
    entry computation)."""
    out, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"(ENTRY )?%(\S+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            current = out.setdefault("ENTRY" if head.group(1) else head.group(2), [])
        elif line.startswith("}"):
            current = None
        elif current is not None and (parsed := _instruction(line)):
            name, shape, opcode, operands, attributes = parsed
            number = re.search(r"(?:parameter|constant)\((-?\d+)\)", line)
            current.append(
                _Op(
                    name=name,
                    shape=shape,
                    opcode=opcode,
                    operands=operands,
                    attributes=attributes,
                    root=line.lstrip().startswith("ROOT"),
                    parameter=int(number[1])
                    if number and opcode == "parameter"
                    else None,
                    constant=int(number[1])
                    if number and opcode == "constant"
                    else None,
                )
            )
    return out


def _trip_count(computations: dict, op: _Op) -> int | None:
    """A `while`'s trip count when the compiler knows it (its backend
    config) or its condition is `counter < constant`; None otherwise."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', op.attributes)
    if known:
        return int(known[1])
    condition = re.search(r"condition=%([\w.\-]+)", op.attributes)[1]
    body = computations.get(condition, [])
    constants = {o.name: o.constant for o in body if o.constant is not None}
    for o in body:
        if o.root and o.opcode == "compare" and "direction=LT" in o.attributes:
            if len(o.operands) == 2 and o.operands[1] in constants:
                return constants[o.operands[1]]
    return None


def _fusion_bytes(computations: dict, op: _Op, operand_shapes: list[str]) -> int:
    """HBM bytes of one fusion: its outputs in HBM, and of each operand in
    HBM what the fused computation reads: the slices, when slicing is all it
    does with it; nothing, when it is the buffer of an in-place update
    (which writes only the update)."""
    called = re.search(r"calls=%([\w.\-]+)", op.attributes)[1]
    body = computations.get(called, [])
    by_name = {o.name: o for o in body}
    users: dict[str, list[_Op]] = {}
    for o in body:
        for operand in o.operands:
            users.setdefault(operand, []).append(o)
    root = next(o for o in body if o.root)
    outputs = [by_name[n] for n in root.operands] if root.opcode == "tuple" else [root]
    result_arrays = _arrays(op.shape)
    in_place, total = set(), 0
    for k, out in enumerate(outputs):
        in_hbm = result_arrays[k][1] if k < len(result_arrays) else True
        update = _IN_PLACE.get(out.opcode)
        buffer = out.operands[0] if update is not None else None
        if buffer in by_name and by_name[buffer].parameter is not None:
            in_place.add(buffer)
            total += _size(by_name[out.operands[update]].shape) * in_hbm
        else:
            total += result_arrays[k][0] * in_hbm if k < len(result_arrays) else 0
    for o in body:
        if (
            o.parameter is None
            or o.name in in_place
            or o.parameter >= len(operand_shapes)
        ):
            continue
        whole = _hbm(operand_shapes[o.parameter])
        readers = users.get(o.name, [])
        if readers and all(
            u.opcode in _SLICING and u.operands[0] == o.name for u in readers
        ):
            total += min(whole, sum(_size(u.shape) for u in readers))
        else:
            total += whole
    return total


def hbm_bytes(hlo: str) -> float:
    """HBM bytes one run of a compiled TPU program reads and writes, from its
    HLO text (per chip).

    Each top-level instruction of the entry computation, and of the loop
    bodies it runs (times their trip count; once for a loop whose count
    depends on data), counts its operands and outputs that live in HBM. The exceptions follow what the instruction moves:
      - an asynchronous copy or slice (`copy-start`, `slice-start`) into or
        out of on-chip memory moves its data once; `*-done` moves nothing;
        a cross-program prefetch is counted once even when the compiler
        also re-issues it for the next run;
      - an in-place update (`dynamic-update-slice`, `scatter`, or a fusion
        rooted in one) reads and writes its update, not the buffer;
      - a fusion reads of an operand only the slices it takes, when slicing
        is all it does with it.
    A custom kernel (`custom-call`) counts its operands and outputs once:
    the flash-attention kernels are tiled so that they read each once
    (rlvr_jax/flash.py).
    """
    return _hbm_bytes(_computations(hlo))


def _hbm_bytes(computations: dict) -> float:
    def count(name: str) -> float:
        ops = computations.get(name, [])
        # Operands the compiler copies again for the next run (see above).
        reissued = {
            op.operands[0]
            for op in ops
            if op.opcode == "copy-start"
            and "cross_program_prefetch" not in op.attributes
        }
        total, shapes = 0.0, {}
        for op in ops:
            shapes[op.name] = op.shape
            code, operands = op.opcode, op.operands
            if code in _FREE or code.endswith("-done"):
                continue
            if code == "while":
                body = re.search(r"body=%([\w.\-]+)", op.attributes)[1]
                trips = _trip_count(computations, op)
                total += (1 if trips is None else trips) * count(body)
            elif code in ("call", "conditional", "async-start"):
                for called in re.findall(
                    r"(?:to_apply|calls)=%([\w.\-]+)", op.attributes
                ):
                    total += count(called)
            elif code == "copy-start":
                if (
                    "cross_program_prefetch" in op.attributes
                    and operands[0] in reissued
                ):
                    continue
                dest_bytes, dest_in_hbm = _arrays(op.shape)[0]
                total += _hbm(shapes.get(operands[0], "")) + dest_bytes * dest_in_hbm
            elif code == "slice-start":
                dest_bytes, dest_in_hbm = _arrays(op.shape)[-2]
                source_in_hbm = all(h for _, h in _arrays(shapes.get(operands[0], "")))
                total += dest_bytes * (source_in_hbm + dest_in_hbm)
            elif code in _IN_PLACE:
                update = shapes.get(operands[_IN_PLACE[code]], "")
                total += _hbm(update) + _size(update) * _arrays(op.shape)[0][1]
            elif code == "fusion":
                total += _fusion_bytes(
                    computations, op, [shapes.get(o, "") for o in operands]
                )
            else:
                total += _hbm(op.shape) + sum(_hbm(shapes.get(o, "")) for o in operands)
        return total

    return count("ENTRY")


def depth_cost(
    build: Callable[[model_lib.ModelConfig], Any], config: model_lib.ModelConfig
) -> tuple[float, float]:
    """Cost of `build(config)`'s program at `config.n_layers`, from depths 1, 2.

    `build` returns a compiled program for a model config; it is compiled
    with the layer scan unrolled at depth 1 and 2, and the cost, linear in
    depth, is extrapolated: c(L) = c(1) + (L - 1)(c(2) - c(1)).
    """
    c1, c2 = (
        np.array(cost(build(config.replace(n_layers=d, unroll_loops=True))))
        for d in (1, 2)
    )
    return tuple(float(x) for x in c1 + (config.n_layers - 1) * (c2 - c1))


# ------------------------------------------------------------------ setup
@dataclasses.dataclass(frozen=True)
class Shapes:
    """The sizes one RL step runs at (worst case: every response full length).

    Attributes:
      responses: rows of the learner batch (train.batch_size × rollout.n).
      prompt_width: largest prompt bucket.
      new_tokens: rollout.max_new_tokens.
      chunk_prompts: prompts per sampler call (padded to split over the mesh).
      chunks: sampler calls per step.
      micro_batch: rows per gradient-accumulation slice (from
        train.max_tokens_per_micro_batch when that is set, as the learner
        splits them); learner_rows: the learner batch's rows, `responses`
        rounded up to whole micro-batches (a token budget need not divide it).
      eval_prompts: prompts per evaluation call; eval_chunks: calls per
        evaluation; eval_new_tokens: its max_new_tokens.
    """

    responses: int
    prompt_width: int
    new_tokens: int
    chunk_prompts: int
    chunks: int
    micro_batch: int
    learner_rows: int
    eval_prompts: int
    eval_chunks: int
    eval_new_tokens: int

    @property
    def learner_width(self) -> int:
        return self.prompt_width + self.new_tokens


def model_config_for(config) -> model_lib.ModelConfig:
    """The run's `ModelConfig` without weights or a tokenizer on this host.

    `model.preset` names a `ModelConfig` constructor ('tiny', 'qwen2_5_7b',
    ...); a local HF directory is read; otherwise a hub id is matched to the
    preset of the same name (Qwen2.5-Math-1.5B, Qwen2.5-7B, Qwen2.5-0.5B).
    """
    m = config.model
    # model.remat is the learner's (LearnerConfig.remat), not the model's.
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype)
    if m.preset:
        from rlvr_jax import train

        if m.preset in train.RANDOM_PRESETS:  # sized by their tokenizer
            return train.random_preset(config)[1]
        return getattr(model_lib.ModelConfig, m.preset)(**overrides)
    if os.path.isdir(m.path):
        from rlvr_jax import params as params_lib

        return params_lib.read_config(m.path, **overrides)
    name = os.path.basename(m.path.rstrip("/")).lower()
    presets = {
        "qwen2.5-math-1.5b": "qwen2_5_math_1_5b",
        "qwen2.5-math-1.5b-instruct": "qwen2_5_math_1_5b",
        "qwen2.5-7b": "qwen2_5_7b",
        "qwen2.5-math-7b": "qwen2_5_7b",
        "qwen2.5-0.5b": "qwen2_5_0_5b",
    }
    if name not in presets:
        raise ValueError(
            f"model.path={m.path!r} is not a local directory and not a known "
            f"hub id ({sorted(presets)}); pass --config.model.preset"
        )
    return getattr(model_lib.ModelConfig, presets[name])(**overrides)


def eval_example_count(config) -> tuple[int, str]:
    """(examples evaluated each time, where the number comes from).

    `eval.path` may name several sets, comma-separated (`train.eval_sets`):
    they are sampled together, so their counts add up.
    """
    e = config.eval
    if not e.every:
        return 0, "eval.every = 0"
    paths = [p.strip() for p in e.path.split(",") if p.strip()] or [e.path]
    total, sources = 0, []
    for path in paths:
        count, source = _eval_set_count(path)
        total += min(count, e.max_examples) if e.max_examples else count
        sources.append(source)
    return total, ",".join(sources)


def _eval_set_count(path: str) -> tuple[int, str]:
    """(examples, source) of one evaluation set, read as the run reads it."""
    from rlvr_jax import data as data_lib

    if path == "builtin":
        return len(data_lib.builtin_task()), "the built-in task"
    try:
        # A path, a packaged name (math500) or a cached hub id.
        source = data_lib.resolve_source(path) if path else ""
    except FileNotFoundError:
        source = ""
    if source:
        return len(data_lib.load_examples(source)), path
    # The paper's run validates on MATH500 (docs/recipe.md).
    return 500, f"eval.path={path!r} not found here: MATH500's 500 assumed"


def shapes_for(config, mesh, eval_examples: int) -> Shapes:
    """The step's sizes under `config` on `mesh` (as sampler.rollout pads them)."""
    divisor = sharding_lib.batch_divisor(mesh)
    n = config.rollout.n
    per_chunk = max(1, config.rollout.chunk_size // n)
    batch = config.train.batch_size
    chunk_prompts = min(per_chunk, batch)
    chunk_prompts += -chunk_prompts % divisor
    eval_chunk = min(max(1, config.eval.chunk_size), max(1, eval_examples))
    eval_chunk += -eval_chunk % divisor
    responses = batch * n
    prompt_width = max(config.data.prompt_buckets)
    micro = config.train.micro_batch_size
    budget = config.train.max_tokens_per_micro_batch
    if budget:
        # Worst case, one response per learner row of the widest width.
        width = prompt_width + config.rollout.max_new_tokens
        micro = min(responses, packing.rows_per_micro_batch(width, budget, divisor))
    return Shapes(
        responses=responses,
        prompt_width=prompt_width,
        new_tokens=config.rollout.max_new_tokens,
        chunk_prompts=chunk_prompts,
        chunks=-(-batch // per_chunk),
        micro_batch=micro,
        learner_rows=-(-responses // micro) * micro,
        eval_prompts=eval_chunk,
        eval_chunks=-(-eval_examples // max(1, config.eval.chunk_size)),
        eval_new_tokens=config.eval.max_new_tokens,
    )


def _sds(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def _with_shardings(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        tree,
        shardings,
    )


def _abstract(out, compiled_shardings):
    """ShapeDtypeStructs of a program's outputs with the compiler's shardings."""
    return _with_shardings(out, compiled_shardings)


# --------------------------------------------------------------- builders
@dataclasses.dataclass
class Run:
    """Everything the programs are built from (the run's objects, abstract)."""

    config: Any  # the experiment ConfigDict
    model: model_lib.ModelConfig
    mesh: Any
    learner: grpo.LearnerConfig
    tx: Any
    settings: sampler_lib.SamplingSettings
    eval_settings: sampler_lib.SamplingSettings
    shapes: Shapes
    decode_sharding: Any  # placement of the packed decode weights
    # XLA options every program of this run is compiled with (None: defaults).
    compiler_options: dict | None = None


def make_run(
    config,
    devices: Sequence,
    eval_examples: int,
    model: model_lib.ModelConfig | None = None,
    hbm_bytes: float | None = None,
) -> Run:
    """The `Run` of `config` over `devices` (train.py builds the same objects).

    `model` replaces the config's model (tests plan odd architectures);
    `hbm_bytes` is the memory per chip that `rollout.decode_weights="auto"`
    chooses by (default: the chip's).
    """
    from rlvr_jax import train

    model = model or model_config_for(config)
    mesh = sharding_lib.make_mesh(
        data=config.mesh.data,
        fsdp=config.mesh.fsdp,
        tensor=config.mesh.tensor,
        devices=devices,
    )
    train.validate(config, model, mesh)
    eos = model.eos_token_ids or (0,)
    settings = sampler_lib.SamplingSettings(
        max_new_tokens=config.rollout.max_new_tokens,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        top_k=config.rollout.top_k,
        eos_ids=eos,
        n=config.rollout.n,
        cache_dtype=config.rollout.cache_dtype,
    )
    eval_settings = sampler_lib.SamplingSettings(
        max_new_tokens=config.eval.max_new_tokens,
        temperature=0.0,
        eos_ids=eos,
        cache_dtype=config.rollout.cache_dtype,
    )
    return Run(
        config=config,
        model=model,
        mesh=mesh,
        learner=train._learner_config(config).replace(
            attention_kernel=train.attention_kernel(config, mesh, model)
        ),
        tx=train._optimizer(config),
        settings=settings,
        eval_settings=eval_settings,
        shapes=shapes_for(config, mesh, eval_examples),
        decode_sharding=train.decode_weights_sharding(
            config, mesh, model, hbm_bytes or _device_hbm(devices[0])
        ),
    )


def _device_hbm(device) -> float | None:
    try:
        return chip_for(device.device_kind).hbm_bytes
    except ValueError:
        return None  # no specs: "auto" decode weights stay replicated


def abstract_params(run: Run, model: model_lib.ModelConfig, dtype=None):
    """Sharded ShapeDtypeStructs of the params (in `dtype` if given)."""
    params = model_lib.abstract_params(model)
    if dtype is not None:
        params = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, jnp.dtype(dtype)), params
        )
    return _with_shardings(params, sharding_lib.tree_shardings(params, run.mesh))


def reference_params(run: Run, model: model_lib.ModelConfig):
    """The reference policy's weights as train.run keeps them (None: no KL)."""
    if run.config.loss.kl_coef == 0:
        return None
    params = abstract_params(run, model)
    cast = jax.eval_shape(lambda p: sampler_lib.compute_dtype_params(model, p), params)
    return _with_shardings(cast, jax.tree.map(lambda a: a.sharding, params))


def _rows(run: Run):
    return sharding_lib.batch_sharding(run.mesh)


def _replicated(run: Run):
    return sharding_lib.replicated(run.mesh)


def compile_prepare(run: Run, model: model_lib.ModelConfig):
    """The sampler's decode weights from the train params (`sampler.prepare`).

    Off CPU, `prepare` packs in the compute dtype and the prefill reads the
    params themselves, so packing is the whole program.
    """
    fn = sampler_lib._pack_compiled(run.decode_sharding)
    return compile_or_oom(
        fn.lower(model, abstract_params(run, model), model.dtype), run
    )


def sampler_weights(run: Run, model: model_lib.ModelConfig, prepared):
    """Abstract `prepare` outputs, placed as the compiler placed them."""
    decode = jax.eval_shape(
        lambda p: decoding.pack(model, p, model.dtype),
        model_lib.abstract_params(model),
    )
    if isinstance(prepared, OutOfMemory):
        # Refused: place them as asked (replicated unless the compiler chose).
        placed = run.decode_sharding or _replicated(run)
        shardings = jax.tree.map(lambda _: placed, decode)
    else:
        shardings = prepared.output_shardings
    return sampler_lib.SamplerWeights(
        prefill=abstract_params(run, model),
        decode=_with_shardings(decode, shardings),
    )


def _prompts(run: Run, prompts: int):
    width = run.shapes.prompt_width
    return (
        _sds((prompts, width), jnp.int32, _rows(run)),
        _sds((prompts, width), bool, _rows(run)),
    )


def _key(run: Run):
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=_replicated(run))


def compile_sample(run, model, weights, prompts: int, settings, slots=None):
    """A rollout of `prompts` prompts through `slots` decode slots (default
    prompts × n): `sampler.continuous`'s program, as `sampler.rollout` runs it."""
    tokens, mask = _prompts(run, prompts)
    scalar = _sds((), jnp.int32, _replicated(run))
    width = run.shapes.prompt_width + settings.max_new_tokens
    return compile_or_oom(
        sampler_lib._continuous_jit.lower(
            model,
            weights,
            tokens,
            mask,
            _key(run),
            scalar,
            scalar,
            settings=settings,
            slots=slots or prompts * settings.n,
            refill_every=8,
            block=min(sampler_lib.ATTENTION_BLOCK, width),
            slot_sharding=_rows(run),
        ),
        run,
    )


def mean_fill(run: Run, settings) -> int:
    """Cache slots a decode step attends over, averaged over a rollout whose
    responses all run to max_new_tokens: the fill grows by one a step, from
    the prompt width to the whole cache."""
    return run.shapes.prompt_width + -(-settings.max_new_tokens // 2)


def compile_decode_step(run, model, weights, prompts: int, settings, width=None):
    """One decode step of `prompts` × n slots (the continuous loop's body),
    attention over a whole cache of `width` slots (default: prompt width +
    max_new_tokens, every slot full length)."""
    r = prompts * settings.n
    s = width or run.shapes.prompt_width + settings.max_new_tokens
    k, h = model.n_kv_heads, model.head_dim
    rows = _rows(run)
    cache_dtype = settings.cache_dtype
    caches = decoding.Cache(
        k=tuple(_sds((r, k, h, s), cache_dtype, rows) for _ in range(model.n_layers)),
        v=tuple(_sds((r, k, s, h), cache_dtype, rows) for _ in range(model.n_layers)),
    )
    n = settings.max_new_tokens
    state = sampler_lib._SlotState(
        caches=caches,
        valid_sw=_sds((r, s), bool, rows),
        prompt_len_s=_sds((r,), jnp.int32, rows),
        last_s=_sds((r,), jnp.int32, rows),
        tokens_rn=_sds((r, n), jnp.int32, rows),
        logprobs_rn=_sds((r, n), jnp.float32, rows),
        lengths_r=_sds((r,), jnp.int32, rows),
        ended_r=_sds((r,), bool, rows),
    )
    scalar = _sds((), jnp.int32, _replicated(run))
    slots = scheduler.Slots(
        row_s=_sds((r,), jnp.int32, rows),
        step_s=_sds((r,), jnp.int32, rows),
        live_s=_sds((r,), bool, rows),
        next_row=scalar,
        decode_steps=scalar,
    )
    fn = jax.jit(
        sampler_lib._slot_decode_step,
        static_argnames=("config", "settings", "prompt_width", "block"),
        donate_argnums=2,
    )
    return compile_or_oom(
        fn.lower(
            model,
            weights.decode,
            state,
            slots,
            _key(run),
            scalar,
            settings=settings,
            prompt_width=run.shapes.prompt_width,
            block=s,
        ),
        run,
    )


def learner_batch(run: Run, rows: int, with_ref: bool) -> dict:
    """Abstract packed learner batch (rlvr_jax/packing.py) of `rows` rows at
    the widest bucket, with the LM head at one widest response's positions
    per row."""
    t = run.shapes.learner_width
    k = run.shapes.new_tokens
    sh = _rows(run)
    batch = {
        "tokens": _sds((rows, t), jnp.int32, sh),
        "mask": _sds((rows, t), bool, sh),
        "segment_ids": _sds((rows, t), jnp.int32, sh),
        "positions": _sds((rows, t), jnp.int32, sh),
        "loss_mask": _sds((rows, t), bool, sh),
        "advantages": _sds((rows, t), jnp.float32, sh),
        "loss_weight": _sds((rows, t), jnp.float32, sh),
        "head_cols": _sds((rows, k), jnp.int32, sh),
    }
    if not run.learner.recompute_old_logp:
        batch["old_logp"] = _sds((rows, t), jnp.float32, sh)
    if with_ref:
        batch["ref_logp"] = _sds((rows, t), jnp.float32, sh)
    return batch


_LOGPROB_INPUTS = ("tokens", "mask", "segment_ids", "positions", "head_cols")


def compile_ref_logprobs(run, model, learner, rows: int):
    """The reference policy's log-probs of a `rows`-row learner batch."""
    reference = reference_params(run, model)
    batch = learner_batch(run, rows, with_ref=False)
    fn = grpo.jit_logprobs(model, learner, run.mesh)
    return compile_or_oom(
        fn.lower(reference, {k: batch[k] for k in _LOGPROB_INPUTS}), run
    )


def compile_train_step(run, model, learner, rows: int):
    """One optimizer update on a `rows`-row learner batch."""
    state = grpo.sharded_abstract_state(model, run.tx, run.mesh)
    batch = learner_batch(run, rows, with_ref=run.config.loss.kl_coef != 0)
    fn = grpo.jit_train_step(model, learner, run.tx, run.mesh)
    return compile_or_oom(fn.lower(state, batch), run)


def compile_micro_step(run, model, learner, rows: int):
    """The body of the micro-batch scan: one micro-batch's grads, accumulated."""
    params = abstract_params(run, model)
    batch = learner_batch(run, rows, with_ref=run.config.loss.kl_coef != 0)
    one = learner.replace(micro_batch_size=None, max_tokens_per_micro_batch=None)

    def body(acc, params, micro):
        grads, metrics = grpo.loss_and_grads(
            params, micro, model_config=model, learner_config=one, mesh=run.mesh
        )
        return jax.tree.map(jnp.add, acc, grads), metrics

    fn = jax.jit(body, donate_argnums=0)
    return compile_or_oom(fn.lower(params, params, batch), run)


# ------------------------------------------------------------------- plan
@dataclasses.dataclass
class Plan:
    """The plan of one run on one target (see `plan`)."""

    topology: str
    chip: Chip
    chips: int
    shapes: Shapes
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


def _program(name, compiled, calls, flops, hbm_bytes, chip, resident_args=0):
    # Roofline: compute and memory traffic overlap perfectly at best.
    seconds = max(flops / chip.bf16_flops_per_s, hbm_bytes / chip.hbm_bytes_per_s)
    return Program(
        name=name,
        calls=calls,
        flops=flops,
        hbm_bytes=hbm_bytes,
        seconds=seconds,
        resident_args=resident_args,
        oom=isinstance(compiled, OutOfMemory),
        **memory(compiled),
    )


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


def sample_cost(run: Run, prompts: int, settings, weights, slots=None) -> tuple:
    """(FLOPs, bytes, decode step program, its (FLOPs, bytes)) of one rollout,
    its loop counted.

    The rollout program at depth 1 and 2 counts the prefill, one refill and
    one decode step. With every response full length (the worst case), the
    R = prompts × n rows pass through the S slots in ceil(R / S) waves of
    `max_new_tokens - 1` decode steps each (a row's first token comes from
    the prefill), so all but one of those steps are added from the compiled
    decode step. That step attends over a cache of the mean fill
    (`mean_fill`): the run's loop reads the cache only up to the longest
    live row, so the mean step is the step at the mean fill.
    Refills (every 8 steps, a prompt-width copy of each slot's cache) are
    counted once.
    """
    model = run.model
    slots = slots or prompts * settings.n

    def build(m):
        w = sampler_weights(run, m, compile_prepare(run, m))
        return compile_sample(run, m, w, prompts, settings, slots)

    flops, nbytes = depth_cost(build, model)
    step = compile_decode_step(
        run, model, weights, slots // settings.n, settings, mean_fill(run, settings)
    )
    step_flops, step_bytes = cost(step)
    waves = -(-prompts * settings.n // slots)
    more = waves * (settings.max_new_tokens - 1) - 1
    return (
        flops + more * step_flops,
        nbytes + more * step_bytes,
        step,
        (step_flops, step_bytes),
    )


def _cost_learner(run: Run) -> grpo.LearnerConfig:
    # One log-prob chunk (no scan, same FLOPs) for the cost programs.
    return run.learner.replace(logits_chunk=run.shapes.learner_width)


def ref_logprobs_cost(run: Run) -> tuple[float, float]:
    """(FLOPs, bytes) of the reference pass: micro-batches × one, by depth."""
    sh = run.shapes
    flops, nbytes = depth_cost(
        lambda m: compile_ref_logprobs(run, m, _cost_learner(run), sh.micro_batch),
        run.model,
    )
    n_micro = sh.learner_rows // sh.micro_batch
    return n_micro * flops, n_micro * nbytes


def compile_update(run, model):
    """The train step's optimizer update on accumulated grads
    (`grpo.apply_update`), state donated as in the train step."""
    state = grpo.sharded_abstract_state(model, run.tx, run.mesh)
    grads = abstract_params(run, model)
    loss = _sds((), jnp.float32, _replicated(run))
    fn = jax.jit(
        lambda state, grads, loss: grpo.apply_update(state, grads, loss, run.tx),
        donate_argnums=0,
    )
    return compile_or_oom(fn.lower(state, grads, loss), run)


def train_step_cost(run: Run) -> tuple[float, float]:
    """(FLOPs, bytes) of the train step: M micro-batch scan bodies and the
    optimizer update, each costed by depth (the step is exactly those: the
    whole program would count its scan body once)."""
    sh = run.shapes
    cfg = _cost_learner(run)
    body_flops, body_bytes = depth_cost(
        lambda m: compile_micro_step(run, m, cfg, sh.micro_batch), run.model
    )
    flops, nbytes = depth_cost(lambda m: compile_update(run, m), run.model)
    micro = sh.learner_rows // sh.micro_batch
    return flops + micro * body_flops, nbytes + micro * body_bytes


def compile_programs(
    run: Run, chip: Chip, verbose: bool = False, costs: bool = True
) -> list[Program]:
    """Compiles the step's programs and costs them (see the module docstring).

    With `costs=False` only the full programs are compiled (their memory is
    all a fit check needs); FLOPs, bytes and times are then 0.
    """
    model, learner, sh = run.model, run.learner, run.shapes
    state_bytes = sharding_lib.bytes_per_device(
        grpo.sharded_abstract_state(model, run.tx, run.mesh)
    )
    ref = reference_params(run, model)
    ref_bytes = 0 if ref is None else sharding_lib.bytes_per_device(ref)
    params_bytes = sharding_lib.bytes_per_device(abstract_params(run, model))
    programs = []

    def timed(name, fn, *args):
        t0 = time.time()
        out = fn(*args)
        _log(verbose, f"  {name}: {time.time() - t0:.0f} s")
        return out

    def priced(name, fn, *args):
        return timed(f"{name} costs", fn, *args) if costs else (0.0, 0.0)

    costed = cost_run(run)

    # ---- sampler: weights, then one chunk (its decode loop counted per step).
    prepared = timed("prepare", compile_prepare, run, model)
    weights = sampler_weights(run, model, prepared)
    prepare_cost = cost(prepared) if costs else (0.0, 0.0)
    programs.append(_program("prepare", prepared, 1, *prepare_cost, chip, params_bytes))

    def sampler_programs(name, prompts, settings, calls, slots=None):
        full = timed(
            name, compile_sample, run, model, weights, prompts, settings, slots
        )
        if not costs:
            return [_program(name, full, calls, 0.0, 0.0, chip)]
        flops, nbytes, step, step_cost = timed(
            f"{name} costs", sample_cost, costed, prompts, settings, weights, slots
        )
        decode = _program(f"{name}.decode_step", step, 0, *step_cost, chip)
        return [_program(name, full, calls, flops, nbytes, chip), decode]

    # One rollout per step: every prompt prefilled, chunk_prompts × n slots.
    n = run.settings.n
    step_prompts = sh.responses // n
    step_prompts += -step_prompts % sharding_lib.batch_divisor(run.mesh)
    programs += sampler_programs(
        "sample", step_prompts, run.settings, 1, sh.chunk_prompts * n
    )

    # ---- learner: reference log-probs, train step (both micro-batched).
    if ref is not None:
        full = timed(
            "ref_logprobs", compile_ref_logprobs, run, model, learner, sh.learner_rows
        )
        flops, nbytes = priced("ref_logprobs", ref_logprobs_cost, costed)
        programs.append(
            _program("ref_logprobs", full, 1, flops, nbytes, chip, ref_bytes)
        )
    full = timed("train_step", compile_train_step, run, model, learner, sh.learner_rows)
    flops, nbytes = priced("train_step", train_step_cost, costed)
    # The state is donated: the program's outputs alias it.
    programs.append(_program("train_step", full, 1, flops, nbytes, chip, state_bytes))

    # ---- evaluation: greedy, one response per prompt.
    if sh.eval_chunks and run.config.eval.every:
        calls = sh.eval_chunks / run.config.eval.every
        programs += sampler_programs(
            "eval_sample", sh.eval_prompts, run.eval_settings, calls
        )
    for p in programs:
        if p.name in ("sample", "eval_sample"):
            # The prefill reads the train params (resident); the packed
            # weights are the rollout's own.
            p.resident_args = params_bytes
    return programs


def resident_phases(run: Run, programs: list[Program]) -> dict[str, int]:
    """Bytes per chip that coexist in each phase of a step.

    Always resident: the train state and the reference weights (with
    `train.reference_on_host`, the reference only in its own pass). Each phase
    adds what its program holds beyond those (its other arguments, outputs
    and temporaries); sampling also holds the prepared sampler weights, which
    are the arguments of `sample`.
    """
    model = run.model
    state = sharding_lib.bytes_per_device(
        grpo.sharded_abstract_state(model, run.tx, run.mesh)
    )
    ref = reference_params(run, model)
    ref_bytes = 0 if ref is None else sharding_lib.bytes_per_device(ref)
    on_host = ref_bytes if run.config.train.reference_on_host else 0
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


def _times(run: Run, programs: list[Program]) -> dict[str, float]:
    by_name = {p.name: p for p in programs}
    times = {
        "sampling": by_name["prepare"].seconds
        + by_name["sample"].seconds * by_name["sample"].calls,
        "logprob_passes": 0.0,
        "update": by_name["train_step"].seconds,
        "evaluation": 0.0,
    }
    if "ref_logprobs" in by_name:
        times["logprob_passes"] = by_name["ref_logprobs"].seconds
    if "eval_sample" in by_name:
        e = by_name["eval_sample"]
        times["evaluation"] = (
            by_name["prepare"].seconds / run.config.eval.every + e.seconds * e.calls
        )
    return times


def learner_mfu(run: Run, train: Program, chip: Chip) -> float:
    """Model FLOPs of the train step over its roofline time × the chips' peak.

    Model FLOPs as in `benchmarks/learner.py` (PaLM, appendix B): 6·N per
    token for the matmuls (a tied embedding counted once, as the head) plus
    12·layers·heads·head_dim·T for attention; recomputation is not counted.
    """
    m = run.model
    n = model_lib.count_params(model_lib.abstract_params(m))
    if not m.tie_embeddings:
        n -= m.vocab_size * m.d_model  # the lookup table does no matmul
    t = run.shapes.learner_width
    per_token = 6 * n + 12 * m.n_layers * m.n_heads * m.head_dim * t
    flops = per_token * run.shapes.responses * t
    return flops / (train.seconds * run.mesh.size * chip.bf16_flops_per_s)


def decode_min_bytes(run: Run, prompts: int, settings, filled: int) -> float:
    """Least HBM bytes per chip a decode step must read: weights + filled cache.

    Weights: the compute-dtype weights once (their per-chip share when the
    decode program keeps them sharded is not assumed: the whole copy counts,
    as each chip multiplies its rows by all of them). Cache: this chip's rows
    of `filled` slots, keys and values of every layer.
    """
    m = run.model
    itemsize = jnp.dtype(m.dtype).itemsize
    weights = model_lib.count_params(model_lib.abstract_params(m)) * itemsize
    rows = prompts * settings.n / sharding_lib.batch_divisor(run.mesh)
    cache_item = jnp.dtype(settings.cache_dtype).itemsize
    cache = rows * filled * m.n_layers * 2 * m.n_kv_heads * m.head_dim * cache_item
    return weights + cache


def decode_efficiency(run: Run, step: Program) -> float:
    """The least bytes of the mean decode step (`decode_min_bytes` at
    `mean_fill`) over the bytes its compiled program moves: 1 when it reads
    the weights and the filled cache once and nothing else."""
    filled = mean_fill(run, run.settings)
    least = decode_min_bytes(run, run.shapes.chunk_prompts, run.settings, filled)
    return least / step.hbm_bytes


def plan(
    config,
    topology: str | None = None,
    *,
    model: model_lib.ModelConfig | None = None,
    hbm_bytes: float | None = None,
    eval_examples: int | None = None,
    search: bool = True,
    costs: bool = True,
    verbose: bool = False,
) -> Plan:
    """Compiles `config`'s step for `topology` (or the local devices) and plans.

    Args:
      config: the experiment ConfigDict (as main.py gets it).
      topology: a TPU topology name ('v5e:2x4'); None plans for
        `jax.devices()` (an accelerator).
      model: replaces the config's model (tests).
      hbm_bytes: memory per chip to plan against (default: the chip's, or
        what the local device reports).
      eval_examples: examples per evaluation (default: from eval.path).
      search: when the run does not fit, look for overrides that do.
      costs: also compile the cost programs (FLOPs, bytes, times); without
        them the plan only answers whether it fits.
      verbose: log compile progress to stderr.

    Returns:
      the `Plan`.
    """
    notes = []
    if topology:
        devices = topology_devices(topology)
        chip = chip_for(topology.split(":")[0])
        name = topology
    else:
        devices = jax.devices()
        if devices[0].platform == "cpu":
            raise ValueError("no accelerator here: pass a topology (e.g. v5e:2x4)")
        chip = chip_for(devices[0].device_kind)
        name = f"local:{len(devices)}x{devices[0].device_kind}"
        stats = devices[0].memory_stats() or {}
        if hbm_bytes is None and "bytes_limit" in stats:
            hbm_bytes = float(stats["bytes_limit"])
    if eval_examples is None:
        eval_examples, source = eval_example_count(config)
        notes.append(f"evaluation: {eval_examples} examples ({source})")
    hbm = float(hbm_bytes or chip.hbm_bytes)
    run = make_run(config, devices, eval_examples, model, hbm)
    _log(verbose, f"planning {name}: mesh {dict(run.mesh.shape)}, {run.shapes}")
    if config.rollout.decode_weights == "auto":
        layout = "replicated" if run.decode_sharding is not None else "sharded"
        notes.append(f"rollout.decode_weights=auto: {layout} on this chip")
    if config.model.get("attention", "auto") == "auto":
        kernel = run.learner.attention_kernel
        notes.append(f"model.attention=auto: {kernel} for the learner on this chip")
    programs = compile_programs(run, chip, verbose, costs)
    for p in programs:
        if p.oom:
            notes.append(
                f"{p.name}: the compiler ran out of HBM; it needs "
                f"{p.temp / GB:.1f} GB of temporaries"
            )
    times = _times(run, programs)
    initial_eval = 0.0
    if "eval_sample" in {p.name for p in programs}:
        initial_eval = times["evaluation"] * config.eval.every
    result = Plan(
        topology=name,
        chip=chip,
        chips=len(devices),
        shapes=run.shapes,
        steps=config.train.steps,
        hbm_bytes_per_chip=hbm,
        programs=programs,
        phases=resident_phases(run, programs),
        times=times,
        run_seconds=config.train.steps * sum(times.values()) + initial_eval,
        notes=notes,
        overrides={},
        largest={},
        mfu=learner_mfu(run, _by(programs, "train_step"), chip) if costs else 0.0,
        decode_efficiency=(
            decode_efficiency(run, _by(programs, "sample.decode_step"))
            if costs
            else 0.0
        ),
        reference_on_host=bool(config.train.reference_on_host),
        attention_kernel=run.learner.attention_kernel,
    )
    result.largest = largest_sizes(run, result)
    if not result.fits and search:
        result.overrides = fitting_overrides(
            config, topology, result, model, eval_examples, verbose
        )
    elif result.fits:
        result.overrides = {
            k: v for k, v in result.largest.items() if v != _get(config, k)
        }
    return result


def _by(programs, name):
    return next(p for p in programs if p.name == name)


def _candidates(total: int, step: int) -> list[int]:
    """Sizes that are multiples of `step` and divide `total`, ascending."""
    return [c for c in range(step, total + 1, step) if total % c == 0]


def largest_sizes(run: Run, result: Plan) -> dict[str, int]:
    """Largest rollout.chunk_size and train.micro_batch_size estimated to fit.

    With train.max_tokens_per_micro_batch set (it decides the micro-batch
    then, and micro_batch_size is unused), the micro-batch is offered as that
    budget: the fitting rows per chip times the widest learner row.

    A phase's temporaries and outputs are taken as proportional to the rows
    its program runs at once (the KV cache and activations are); the rest of
    the phase stays. A size must fit every phase it sets (the micro-batch:
    the reference pass and the update). Growing a size this way over-estimates its memory (the fixed part
    is scaled too), so the estimate errs towards fitting less; shrinking one
    under-estimates it, which is why `fitting_overrides` re-plans the
    suggestion before offering it.
    """
    sh, hbm = run.shapes, result.hbm_bytes_per_chip
    n = run.config.rollout.n
    divisor = sharding_lib.batch_divisor(run.mesh)
    rows = {
        "sample": sh.chunk_prompts * n,
        "eval_sample": sh.eval_prompts,
        "ref_logprobs": sh.micro_batch,
        "train_step": sh.micro_batch,
    }

    def fits(phases, size_of) -> bool:
        for name in phases:
            if name not in result.phases:
                continue
            prog = result.program(name)
            scaled = prog.temp + (prog.outputs if name.endswith("sample") else 0)
            size = size_of(name)
            if result.phases[name] - scaled + scaled * size / rows[name] > hbm:
                return False
        return True

    step = n * divisor // math.gcd(n, divisor)
    chunks = [
        c
        for c in _candidates(sh.responses, step)
        if fits(("sample",), lambda name, c=c: c)
    ]
    evals = [
        c
        for c in _candidates(sh.responses, divisor)
        if fits(("eval_sample",), lambda name, c=c: c)
    ]
    micros = [
        m
        for m in _candidates(sh.responses, divisor)
        if fits(("ref_logprobs", "train_step"), lambda name, m=m: m)
    ]
    micro = micros[-1] if micros else divisor
    out = {"rollout.chunk_size": chunks[-1] if chunks else step}
    if run.config.train.max_tokens_per_micro_batch:
        out["train.max_tokens_per_micro_batch"] = micro // divisor * sh.learner_width
    else:
        out["train.micro_batch_size"] = micro
    if "eval_sample" in result.phases:
        out["eval.chunk_size"] = evals[-1] if evals else divisor
    return out


def fitting_overrides(
    config, topology, result: Plan, model, eval_examples, verbose
) -> dict:
    """Overrides under which the run fits, each checked by a new plan.

    Tries the largest chunk and micro-batch estimated to fit, then the
    estimates of that plan in turn (the estimate errs when shrinking, see
    `largest_sizes`); then the same with the KL reference kept in host memory
    (no numeric change), a halved learner head chunk and the einsum
    attention instead of the flash kernel (when the train step is over),
    params sharded over every chip (mesh.fsdp = -1), then sharded decode
    weights, each adding to the last. Returns {} when nothing fits.
    """
    hbm = result.hbm_bytes_per_chip

    def attempt(changes: dict, largest: dict, depth: int = 0) -> dict | None:
        current = {k: changes.get(k, _get(config, k)) for k in largest}
        shrink = {k: v for k, v in largest.items() if v < current[k]}
        if depth and not shrink:
            return None  # nothing left to shrink: a re-plan would repeat
        changes = {**changes, **shrink}
        if not changes or depth > 3:
            return None
        _log(verbose, f"re-planning with {changes}")
        p = plan(
            _override(config, changes),
            topology,
            model=model,
            hbm_bytes=hbm,
            eval_examples=eval_examples,
            search=False,
            costs=False,
        )
        if p.fits:
            return changes
        return attempt(changes, p.largest, depth + 1)

    layouts = [{}]
    if config.loss.kl_coef and not config.train.reference_on_host:
        layouts.append({"train.reference_on_host": True})
    if result.phases["train_step"] > hbm and config.train.logits_chunk >= 256:
        # The update is over: halve its [rows, chunk, vocab] logits block
        # (left when the micro-batch is one row per chip already).
        chunk = config.train.logits_chunk // 2
        layouts.append({**layouts[-1], "train.logits_chunk": chunk})
    if result.phases["train_step"] > hbm and result.attention_kernel == "flash":
        # The flash kernel's backward holds more per layer than the einsum
        # blocks (README "Plan a run"): trade its speed for that memory.
        layouts.append({**layouts[-1], "model.attention": "xla"})
    if config.mesh.fsdp != -1:
        layouts.append(
            {**layouts[-1], "mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1}
        )
    if config.rollout.decode_weights != "sharded":
        layouts.append({**layouts[-1], "rollout.decode_weights": "sharded"})
    for layout in layouts:
        found = attempt(layout, result.largest if not layout else {})
        if found:
            return found
    return {}


def _get(config, dotted: str):
    section, field = dotted.split(".")
    return config[section][field]


def _override(config, changes: dict):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        for dotted, value in changes.items():
            section, field = dotted.split(".")
            c[section][field] = value
    return c


# ------------------------------------------------------------------ report
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
    reference = (
        "the reference in its own pass only" if p.reference_on_host else "reference"
    )
    lines += [
        "",
        f"resident per chip by phase (train state + {reference} + the phase's own)",
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


# --------------------------------------------------------------------- cli
def main(argv) -> None:
    del argv
    if _TOPOLOGY.value:
        # Compile-only devices: nothing runs, so no accelerator is looked for.
        jax.config.update("jax_platforms", "cpu")
    config = _CONFIG.value
    result = plan(
        config,
        _TOPOLOGY.value,
        hbm_bytes=_HBM_GB.value * GB if _HBM_GB.value else None,
        eval_examples=_EVAL_EXAMPLES.value,
        search=_SEARCH.value,
        costs=_COSTS.value,
        verbose=True,
    )
    print(format_plan(result), flush=True)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(result.to_json(), f, indent=1)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
    )
    _TOPOLOGY = flags.DEFINE_string(
        "topology", None, "TPU topology, e.g. v5e:2x4; default: the local devices."
    )
    _OUTPUT = flags.DEFINE_string("output", None, "Also write the plan as JSON here.")
    _HBM_GB = flags.DEFINE_float(
        "hbm_gb", None, "Plan against this many GB per chip (default: the chip's)."
    )
    _EVAL_EXAMPLES = flags.DEFINE_integer(
        "eval_examples", None, "Examples per evaluation (default: from eval.path)."
    )
    _SEARCH = flags.DEFINE_bool(
        "search", True, "When it does not fit, re-plan to find overrides that do."
    )
    _COSTS = flags.DEFINE_bool(
        "costs", True, "Also compile the cost programs (FLOPs, bytes, times)."
    )
    flags.mark_flags_as_required(["config"])
    app.run(main)

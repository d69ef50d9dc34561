"""Decode layouts compared: data-parallel replicas against tensor splits.

A decode step of the training rollout is compiled (`engine.lower_decode_step`,
at the mean fill as the planner's sampler cost is) once per decode layout
the devices allow:

  data       the learner's mesh; the decode weights placed as the run's
             `rollout.decode_weights` places them (a replicated copy, or
             split like the params)
  tensor=T   `sharding.decode_mesh` (data = devices / T, tensor = T, T
             devices of one host) with the weights split by
             `sharding.DECODE_RULES`; the KV cache split over rows only, so
             each chip holds (and attends over) T× the rows

and each is priced per chip: HBM bytes (`hlo.hbm_bytes`) and FLOPs as for
every program, plus its collectives (`collectives.count`) on the chip's
interconnect. The decode step's roofline here is

    max(FLOPs / peak, HBM bytes / bandwidth) + wire bytes / ICI bandwidth
        + collectives × `collectives.LATENCY_S`

(collectives not overlapped with the weight reads: a bound from above on
their share). Whether a layout fits is estimated from the run's sampling
phase: its resident bytes plus the difference between this layout's decode
step and the run's (weights and cache are the step's arguments), not from a
compile of the whole rollout per layout.
"""

from __future__ import annotations

import dataclasses

import jax

from rlvr_jax import sharding
from rlvr_jax.model import decoder
from rlvr_jax.planning import collectives
from rlvr_jax.planning import compile as compile_lib
from rlvr_jax.planning.chips import Chip
from rlvr_jax.rollout import decoding, engine, sampling


@dataclasses.dataclass(frozen=True)
class Layout:
    """One decode layout's decode step, per chip.

    Attributes:
      name: "data" or "tensor=T".
      tensor: T (1 for data).
      weight_bytes: the packed decode weights one chip holds.
      step_bytes: HBM bytes one decode step reads and writes.
      step_flops: its FLOPs.
      memory: the step program's arguments + outputs + temporaries - aliased.
      collectives: its collectives (`collectives.Collectives`).
      seconds: the decode step's roofline (module docstring).
      used: the run decodes with this layout.
      error: why it was not compiled ("" when it was).
    """

    name: str
    tensor: int
    weight_bytes: int = 0
    step_bytes: float = 0.0
    step_flops: float = 0.0
    memory: int = 0
    collectives: collectives.Collectives = collectives.Collectives()
    seconds: float = 0.0
    used: bool = False
    error: str = ""


def name_of(tensor: int) -> str:
    return "data" if tensor == 1 else f"tensor={tensor}"


def candidates(mesh) -> list[int]:
    """Tensor sizes the mesh's devices allow: 1, and each T of
    `sharding.DECODE_TENSOR_SIZES` that divides the devices and fits a host."""
    per_host = sharding.devices_per_host(mesh.devices)
    sizes = [1]
    for t in sharding.DECODE_TENSOR_SIZES:
        if mesh.devices.size % t == 0 and t <= per_host:
            sizes.append(t)
    return sizes


def decode_weights(run, tensor: int):
    """Abstract packed decode weights of `run` on the layout of `tensor`,
    and that layout's mesh."""
    model = run.model
    params = _abstract_params(run)
    if tensor == run.decode_tensor:
        mesh, placement = run.sampler_mesh, run.decode_sharding
    elif tensor == 1:
        mesh, placement = run.mesh, sharding.replicated(run.mesh)
    else:
        mesh = sharding.decode_mesh(run.mesh, tensor)
        packed = jax.eval_shape(lambda p: decoding.pack(model, p), params)
        placement = sharding.decode_shardings(packed, mesh)
    if placement is None:  # split like the params: as the compiler places them
        lowered = sampling.lower_prepare(
            model, params, decode_sharding=None, platform=run.platform
        )
        placement = compile_lib.compile_or_oom(lowered, run).output_shardings
    weights = sampling.abstract_weights(model, params, placement, run.platform)
    return weights.decode, mesh


def _abstract_params(run):
    params = decoder.abstract_params(run.model)
    shardings = sharding.tree_shardings(params, run.mesh)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        params,
        shardings,
    )


def compare(run, chip: Chip, width: int) -> list[Layout]:
    """The training rollout's decode step (`run.shapes.sample`,
    `run.settings`) under every layout `candidates` allows, attending
    `width` cache columns; compiled as `run`'s programs are (pass the cost
    run, `compile.cost_run`)."""
    ici = collectives.ici_bytes_per_s(chip.name)
    shape = run.shapes.sample
    out = []
    for tensor in candidates(run.mesh):
        name = name_of(tensor)
        used = tensor == run.decode_tensor
        try:
            weights, mesh = decode_weights(run, tensor)
        except (ValueError, AttributeError) as e:
            out.append(Layout(name, tensor, used=used, error=str(e).splitlines()[0]))
            continue
        lowered = engine.lower_decode_step(
            run.model, weights, shape, run.settings, mesh, width
        )
        compiled = compile_lib.compile_or_oom(lowered, run)
        if isinstance(compiled, compile_lib.OutOfMemory):
            message = compiled.message.splitlines()[0]
            out.append(Layout(name, tensor, used=used, error=message))
            continue
        flops, nbytes = compile_lib.cost(compiled)
        memory = compile_lib.memory(compiled)
        coll = collectives.count(compiled.as_text(), tensor)
        seconds = max(
            flops / chip.bf16_flops_per_s, nbytes / chip.hbm_bytes_per_s
        ) + coll.seconds(ici)
        out.append(
            Layout(
                name=name,
                tensor=tensor,
                weight_bytes=sharding.bytes_per_device(weights),
                step_bytes=nbytes,
                step_flops=flops,
                memory=memory["arguments"]
                + memory["outputs"]
                + memory["temp"]
                - memory["alias"],
                collectives=coll,
                seconds=seconds,
                used=used,
            )
        )
    return out


def sampling_phase(layouts: list[Layout], run_phase: int) -> dict[str, int]:
    """Each compiled layout's estimated sampling-phase bytes per chip: the
    run's (`run_phase`) plus the difference of the decode steps' memory."""
    used = next((x for x in layouts if x.used and not x.error), None)
    if used is None:
        return {}
    return {x.name: run_phase + x.memory - used.memory for x in layouts if not x.error}


def fastest_fitting(
    layouts: list[Layout], run_phase: int, hbm_bytes: float
) -> Layout | None:
    """The layout with the shortest decode step whose estimated sampling
    phase fits `hbm_bytes` (None: none does)."""
    phases = sampling_phase(layouts, run_phase)
    fitting = [x for x in layouts if x.name in phases and phases[x.name] <= hbm_bytes]
    return min(fitting, key=lambda x: x.seconds, default=None)

"""Compiling a plan's programs: a cache, out-of-memory as a figure, the
options of cost programs, and a program's memory and cost per chip.

`run` arguments are `programs.Run`s (read here: `mesh`, `compiler_options`).

Trip counts. XLA's cost analysis counts a `while`/`scan` body once, whatever
its trip count, so costs are assembled from programs without the step's
outer loops (`planning.programs`); `depth_cost` extrapolates a program's cost
to the model's depth from copies at depth 1 and 2 with the layer scan
unrolled (cost is linear in depth). On GPU, whose compiler has no cost
analysis without a device, FLOPs are counted from the compiled HLO
(`hlo.flops`, loops at their trip counts).
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from rlvr_jax.model import decoder
from rlvr_jax.planning import hlo


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


class CostOutOfMemory(ValueError):
    """A cost program (`cost`) the compiler refused for want of HBM."""


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


def cost_run(run):
    """`run` as its cost programs are compiled: on TPU without windowed
    einsums (`NO_WINDOWED_EINSUM`), whose loops the cost model would count
    once; elsewhere unchanged (the options are TPU flags)."""
    if run.mesh.devices.flat[0].platform != "tpu":
        return run
    return dataclasses.replace(
        run, compiler_options={**(run.compiler_options or {}), **NO_WINDOWED_EINSUM}
    )


def compile_key(lowered, run) -> tuple:
    """What a compiled program is cached under: the same StableHLO for the
    same devices with the same compiler options is the same program."""
    devices = tuple((d.id, d.device_kind) for d in run.mesh.devices.flat)
    options = tuple(sorted((run.compiler_options or {}).items()))
    return lowered.as_text(), devices, options


def compile_or_oom(lowered, run):
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
    plus those of kernels XLA has no count for (`kernel_flops`); on GPU
    (whose compiler, without a device, has no cost analysis) and wherever
    the cost analysis is missing, the matrix products of the compiled HLO,
    loops at their trip counts (`hlo.flops`).
    Bytes are counted from the compiled HLO (`hbm_bytes`): XLA's own
    "bytes accessed" sums every operand and output of every instruction
    wherever it lives, on-chip copies included, and no subtraction of those
    gives the HBM traffic (it went negative for a small train step).
    """
    if isinstance(compiled, OutOfMemory):
        # A cost of 0 would read as a free program: say it instead.
        raise CostOutOfMemory(
            "a cost program does not fit one chip, so this plan has no time "
            "estimate (--nocosts plans memory only): "
            + compiled.message.splitlines()[0]
        )
    computations = hlo.parse(compiled.as_text())  # parsed once for both
    if platform(compiled) == "gpu":
        # XLA:GPU compiling for a target config (no device) has no cost
        # analysis; with a device it would, but one count for every GPU
        # plan keeps deviceless and local plans comparable. The HLO count
        # takes every loop at its trip count.
        flops = hlo.parsed_flops(computations)
    else:
        c = compiled.cost_analysis()
        if isinstance(c, list):  # older jax returns one dict per program
            c = c[0]
        if c and "flops" in c:
            flops = float(c["flops"])
        else:  # no cost analysis: the matrix products of the HLO
            flops = hlo.parsed_flops(computations)
    flops += hlo.parsed_kernel_flops(computations)
    return flops, hlo.parsed_hbm_bytes(computations)


def platform(compiled) -> str | None:
    """The platform of a compiled program's devices ('tpu', 'gpu', 'cpu'),
    None when it has no sharded inputs or outputs to tell."""
    shardings = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
    for s in shardings:
        for device in getattr(s, "device_set", ()):
            return device.platform
    return None


def depth_cost(
    build: Callable[[decoder.ModelConfig], Any], config: decoder.ModelConfig
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

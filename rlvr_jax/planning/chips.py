"""Accelerator figures (HBM, bandwidth, bf16 FLOP/s per chip), and TPU and
GPU topologies as compile-only devices (`jax.experimental.topologies`, with
libtpu for TPUs and the CUDA plugin for GPUs).

A topology names the chip and its layout: TPU slices as libtpu names them
('v5e:2x4', 'v4:2x2x1'); GPUs as 'h100:8' (one node of 8 GPUs) or
'h100:2x8' (2 nodes of 8), for the GPUs whose XLA target config ships in
`gpu_targets/` (`GPU_TARGETS`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pathlib
import re

GB = 1e9


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
    # The other H100/H200 form factors (NVIDIA's H100 and H200 data sheets:
    # their bf16 figures are "with sparsity", twice the dense ones used here).
    "h100_pcie": Chip("h100_pcie", 80 * GiB, 2000e9, 756e12),
    "h100_nvl": Chip("h100_nvl", 94e9, 3900e9, 835e12),
    "h200_nvl": Chip("h200_nvl", 141e9, 4800e9, 835e12),
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
    ("h100 pcie", "h100_pcie"),
    ("h100 nvl", "h100_nvl"),
    ("h100", "h100"),
    ("h200 nvl", "h200_nvl"),
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
    """The devices of a TPU topology such as 'v5e:2x4' (needs libtpu) or of
    a GPU one such as 'h100:8' (needs the CUDA plugin; `gpu_topology_devices`).

    These are compile-only devices: programs lowered on a mesh over them are
    compiled by the real TPU or GPU compiler on this host, and never run.
    Cached: every plan of a topology shares its device objects (and so its
    compiled programs).
    """
    from jax.experimental import topologies

    if is_gpu_topology(topology):
        return gpu_topology_devices(topology)

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
            "`[tpu]` extra (libtpu) and pass e.g. v5e:2x4, v4:2x2x1, v6e:2x4 "
            "(or a GPU topology: h100:8, a100:8, h200:8, h100:2x8)"
        ) from e
    return tuple(desc.devices)


# GPU topology prefix -> the XLA target config (GpuTargetConfigProto text)
# it compiles for: the device description the compiler would read from a
# real GPU (compute capability, SMs, shared memory, ...), written from
# NVIDIA's data sheets. Each prefix is also a CHIPS key.
GPU_TARGETS = {
    "a100": "a100.txtpb",  # A100 SXM4 80GB, sm_80
    "h100": "h100.txtpb",  # H100 SXM5 80GB, sm_90
    "h200": "h200.txtpb",  # H200 SXM 141GB, sm_90
}
GPU_TARGET_DIR = pathlib.Path(__file__).parent / "gpu_targets"
# GPUs per node: an HGX/DGX node of these GPUs holds at most 8 (one NVLink
# domain); several nodes are written NODESxGPUS.
GPUS_PER_NODE = 8
_GPU_LAYOUT = re.compile(r"(?:(\d+)x)?(\d+)")
_CUDA_EXTRA = "install the [cuda] extra: pip install -e '.[cuda]'"


def is_gpu_topology(topology: str) -> bool:
    """Whether `topology` names GPUs ('h100:8'), not a TPU slice."""
    return topology.split(":")[0].lower() in GPU_TARGETS


def parse_gpu_topology(topology: str) -> tuple[str, int, int]:
    """(chip, nodes, GPUs per node) of a GPU topology: 'h100:8' is one node
    of 8 H100s, 'h100:2x8' two nodes of 8. ValueError (one line, naming what
    works) for anything else."""
    usage = (
        f"GPU topologies are CHIP:GPUS or CHIP:NODESxGPUS with CHIP one of "
        f"{', '.join(GPU_TARGETS)} and 1-{GPUS_PER_NODE} GPUs per node, "
        "e.g. h100:8, a100:8, h200:8, h100:2x8"
    )
    chip, _, layout = topology.lower().partition(":")
    found = _GPU_LAYOUT.fullmatch(layout)
    if chip not in GPU_TARGETS or not found:
        raise ValueError(f"bad GPU topology {topology!r}: {usage}")
    nodes, gpus = int(found[1] or 1), int(found[2])
    if not (1 <= gpus <= GPUS_PER_NODE and nodes >= 1):
        raise ValueError(f"bad GPU topology {topology!r}: {usage}")
    return chip, nodes, gpus


def gpu_target_config(chip: str) -> str:
    """The XLA target config text of a GPU chip ('h100'; `GPU_TARGETS`)."""
    return (GPU_TARGET_DIR / GPU_TARGETS[chip]).read_text()


def cuda_plugin_installed() -> bool:
    """Whether jax's CUDA plugin (the `[cuda]` extra) is installed."""
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:  # no jax_plugins package at all
        return False


def gpu_topology_devices(topology: str) -> tuple:
    """The devices of a GPU topology such as 'h100:8' or 'h100:2x8' (needs
    the CUDA plugin of the `[cuda]` extra, but no GPU).

    XLA:GPU compiles for the chip its target config describes instead of
    asking a device. Each node is its own NVLink domain (the plugin's
    partition: 'NxG' is the plugin's topology 'Nx1xG'); the programs are
    compiled for all N×G GPUs as one mesh, as a multi-node run lays them
    out. The plugin must not look for a GPU when it loads (that fails at
    cuInit on a host without one): JAX_PLATFORMS=cpu, which the plan CLI
    sets for any --topology.
    """
    from jax.experimental import topologies

    chip, nodes, gpus = parse_gpu_topology(topology)
    if not cuda_plugin_installed():
        raise ValueError(
            f"cannot compile for GPU topology {topology!r} without the CUDA "
            f"plugin: {_CUDA_EXTRA}"
        )
    try:
        desc = topologies.get_topology_desc(
            platform="cuda",
            target_config=gpu_target_config(chip),
            topology=f"{nodes}x1x{gpus}",
        )
    except (NotImplementedError, RuntimeError) as e:
        # The plugin did not initialise: it looked for a GPU (JAX_PLATFORMS
        # was not cpu when jax started its backends) and found none.
        raise ValueError(
            f"cannot describe GPU topology {topology!r}: the CUDA plugin did "
            "not initialise (start with JAX_PLATFORMS=cpu, as "
            "`python -m rlvr_jax.plan` does, so that it looks for no GPU; "
            f"else {_CUDA_EXTRA}): " + str(e).splitlines()[0]
        ) from e
    return tuple(desc.devices)

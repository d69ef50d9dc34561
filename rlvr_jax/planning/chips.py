"""Accelerator figures (HBM, bandwidth, bf16 FLOP/s per chip) and TPU
topologies as compile-only devices (`jax.experimental.topologies` + libtpu)."""

from __future__ import annotations

import dataclasses
import functools
import os

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

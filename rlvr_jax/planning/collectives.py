"""What a compiled program sends between chips, read from its HLO text.

`count` finds every collective (all-reduce, all-gather, reduce-scatter,
all-to-all, collective-permute, their asynchronous `*-start` forms, and
collectives inside an `async-start`) in the entry computation and the loop
bodies it runs (times their trip counts when the compiler states them),
and sums their operand bytes. `seconds` prices them on the chip's
interconnect (`ICI_BYTES_PER_S`) with a fixed latency per collective.

Operand bytes are what the table reports (hand-checkable: an all-reduce of
a [R, D] fp32 array counts R·D·4). The time uses the bytes a ring moves
per chip instead: an all-reduce of B bytes over n chips sends 2(n-1)/n·B,
an all-gather (n-1)·B of its B-byte shard, a reduce-scatter and an
all-to-all (n-1)/n·B, a collective-permute B.
"""

from __future__ import annotations

import dataclasses
import re

from rlvr_jax.planning import hlo

# Interconnect bandwidth per chip, bytes/s, all links together (vendor data
# sheets): TPU v5e 1,600 Gbps, v6e 3,584 Gbps, v5p 4,800 Gbps of ICI per
# chip; v4 about 2.4e11 B/s (six links); NVLink 4 900 GB/s (H100, H200),
# NVLink 3 600 GB/s (A100). The PCIe form factors talk over PCIe or a
# bridge; they keep NVLink's figure here, an optimistic bound.
ICI_BYTES_PER_S = {
    "v4": 2.4e11,
    "v5e": 1600e9 / 8,
    "v5p": 4800e9 / 8,
    "v6e": 3584e9 / 8,
    "a100": 600e9,
    "h100": 900e9,
    "h200": 900e9,
    "h100_pcie": 600e9,
    "h100_nvl": 600e9,
    "h200_nvl": 900e9,
}
# An assumption, not a measurement: the fixed cost of one small collective
# (launch, synchronisation, one hop), about what small all-reduces take on
# TPU ICI and NVLink alike.
LATENCY_S = 10e-6

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")
KINDS += ("collective-permute",)


@dataclasses.dataclass(frozen=True)
class Collectives:
    """A program's collectives per run, per chip.

    Attributes:
      count: collectives issued (loop bodies times their trip counts).
      operand_bytes: bytes of their operands.
      wire_bytes: bytes a ring sends per chip (module docstring).
      by_kind: count per kind.
    """

    count: int = 0
    operand_bytes: float = 0.0
    wire_bytes: float = 0.0
    by_kind: tuple[tuple[str, int], ...] = ()

    def seconds(self, ici_bytes_per_s: float, latency_s: float = LATENCY_S) -> float:
        """Time on the interconnect: wire bytes at its bandwidth, plus a fixed
        latency per collective (none overlapped with anything)."""
        return self.wire_bytes / ici_bytes_per_s + self.count * latency_s


def ici_bytes_per_s(chip_name: str) -> float:
    """The interconnect bandwidth of a chip (`ICI_BYTES_PER_S`; ValueError
    when unknown)."""
    try:
        return ICI_BYTES_PER_S[chip_name]
    except KeyError:
        raise ValueError(f"no interconnect figure for chip {chip_name!r}") from None


def _kind(opcode: str) -> str | None:
    base = opcode.removesuffix("-start")
    return base if base in KINDS else None


def _group_size(attributes: str, default: int) -> int:
    """Chips per replica group: `replica_groups={{0,1},{2,3}}` or the iota
    form `replica_groups=[4,2]<=[8]` (4 groups of 2)."""
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", attributes)
    if iota:
        return int(iota[2])
    listed = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
    if listed and listed[1]:
        return len(listed[1].split(","))
    return default


def _wire(kind: str, operand: float, n: int) -> float:
    if n <= 1:
        return 0.0
    if kind == "all-reduce":
        return 2 * (n - 1) / n * operand
    if kind == "all-gather":
        return (n - 1) * operand
    if kind in ("reduce-scatter", "all-to-all"):
        return (n - 1) / n * operand
    return operand  # collective-permute: each chip sends its operand once


def _called(attributes: str) -> list[str]:
    names = re.findall(
        r"(?:to_apply|calls|true_computation|false_computation)=%([\w.\-]+)",
        attributes,
    )
    branches = re.search(r"branch_computations=\{([^}]*)\}", attributes)
    if branches:
        names += re.findall(r"%([\w.\-]+)", branches[1])
    return names


def _trips(op) -> int:
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', op.attributes)
    return int(known[1]) if known else 1


def count(hlo_text: str, chips: int = 1) -> Collectives:
    """The collectives one run of a compiled program issues (module
    docstring). `chips`: the group size assumed where an instruction names
    no replica groups (all chips)."""
    computations = hlo.parse(hlo_text)
    kinds: dict[str, int] = {}

    def walk(name: str, times: int) -> tuple[int, float, float]:
        n_total, operand_total, wire_total = 0, 0.0, 0.0
        shapes = {}
        for op in computations.get(name, []):
            shapes[op.name] = op.shape
            kind = _kind(op.opcode)
            called = []
            if op.opcode == "while":
                body = re.search(r"body=%([\w.\-]+)", op.attributes)[1]
                called = [(body, _trips(op))]
            elif op.opcode in ("call", "conditional", "async-start"):
                # Every branch of a conditional counted: an upper bound.
                called = [(c, 1) for c in _called(op.attributes)]
            for sub, trips in called:
                c, o, w = walk(sub, times * trips)
                n_total, operand_total, wire_total = (
                    n_total + c,
                    operand_total + o,
                    wire_total + w,
                )
            if kind is None:
                continue
            operand = sum(hlo_bytes(shapes.get(o, "")) for o in op.operands)
            n = _group_size(op.attributes, chips)
            kinds[kind] = kinds.get(kind, 0) + times
            n_total += times
            operand_total += times * operand
            wire_total += times * _wire(kind, operand, n)
        return n_total, operand_total, wire_total

    n, operand, wire = walk("ENTRY", 1)
    return Collectives(n, operand, wire, tuple(sorted(kinds.items())))


_ITEMSIZE = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4}
_ITEMSIZE.update({"bf16": 2, "f16": 2, "s16": 2, "u16": 2, "s8": 1, "u8": 1})
_ITEMSIZE.update({"pred": 1, "f8e4m3fn": 1, "f8e5m2": 1})


def hlo_bytes(shape: str) -> int:
    """Bytes of every array of an HLO shape string (`f32[8,16]{1,0}`, tuples)."""
    total = 0
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape):
        size = _ITEMSIZE.get(dtype, 0)
        for d in dims.split(","):
            size *= int(d) if d else 1
        total += size
    return total

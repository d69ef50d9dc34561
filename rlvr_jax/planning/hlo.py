"""What a compiled program moves and computes, read from its HLO text.

`hbm_bytes`: the HBM bytes one run reads and writes per chip (loop bodies
times their trip counts); `flops`: the FLOPs of its matrix products (dots,
convolutions, cuBLAS calls), loop bodies times their trip counts, for
targets whose compiler has no cost analysis (XLA:GPU compiled without a
device); `kernel_flops`: the FLOPs of the flash-attention backward kernels,
which carry no cost estimate XLA could count. `parse` reads the text once;
`parsed_*` take its result.
"""

from __future__ import annotations

import dataclasses
import math
import re

# FLOPs per (row, head, query, key, head-dim element) of the flash-attention
# backward kernels (`rlvr_jax.model.flash`), which carry no cost estimate: dK/dV
# recomputes Q·Kᵀ and dO·Vᵀ and forms Pᵀ·dO and dSᵀ·Q (4 products of 2
# FLOPs); dQ recomputes the same two and forms dS·K (3). The forward kernel's
# estimate (which XLA does count) is its reference's, 2 products, every
# tile counted as the XLA path computes them (the causal half included).
_KERNEL_PRODUCTS = {"flash_mha_bwd_dkv": 8, "flash_mha_bwd_dq": 6}


def kernel_flops(hlo: str) -> float:
    """FLOPs of the flash-attention backward kernels in a compiled program,
    each instruction once (from its operands: Q [B, N, T, H], K [B, N, S, H])."""
    return parsed_kernel_flops(parse(hlo))


def parsed_kernel_flops(computations: dict) -> float:
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


def parse(hlo: str) -> dict[str, list[_Op]]:
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
    (rlvr_jax/model/flash.py); a cuBLAS GEMM (XLA:GPU) counts its result,
    not its workspace.
    """
    return parsed_hbm_bytes(parse(hlo))


def parsed_hbm_bytes(computations: dict) -> float:
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
            elif code == "custom-call" and any(
                t in op.attributes for t in _GEMM_TARGETS
            ):
                # A cuBLAS GEMM's output is (result, workspace): the
                # workspace is scratch the library may not touch at all.
                result_bytes, result_in_hbm = _arrays(op.shape)[0]
                total += result_bytes * result_in_hbm
                total += sum(_hbm(shapes.get(o, "")) for o in operands)
            else:
                total += _hbm(op.shape) + sum(_hbm(shapes.get(o, "")) for o in operands)
        return total

    return count("ENTRY")


# Custom calls that are matrix products: cuBLAS and cuBLASLt GEMMs, whose
# backend config carries the dot's dimension numbers (XLA:GPU rewrites most
# dots into them).
_GEMM_TARGETS = (
    'custom_call_target="__cublas$gemm"',
    'custom_call_target="__cublas$lt',
)


def _dims(shape: str) -> list[int]:
    """The dimensions of the first array of an HLO shape."""
    found = _ARRAY.findall(shape)
    return [int(d) for d in found[0][1].split(",") if d] if found else []


def _product_flops(op: _Op, shapes: dict) -> float:
    """2 × output elements × contracted elements of a dot, a GEMM custom call
    or a convolution (one multiply and one add per term); 0 for any other
    instruction."""
    if op.opcode == "dot" or (
        op.opcode == "custom-call" and any(t in op.attributes for t in _GEMM_TARGETS)
    ):
        if op.opcode == "dot":
            found = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", op.attributes)
            contracting = found[1].split(",") if found else []
        else:
            found = re.search(
                r'"lhs_contracting_dimensions":\[([^\]]*)\]', op.attributes
            )
            contracting = re.findall(r"\d+", found[1]) if found else []
        lhs = _dims(shapes.get(op.operands[0], ""))
        terms = math.prod(lhs[int(i)] for i in contracting if i)
        # A GEMM's output is (result, workspace): the result is the first.
        return 2.0 * math.prod(_dims(op.shape)) * terms
    if op.opcode == "convolution":
        kernel = _dims(shapes.get(op.operands[1], ""))
        labels = re.search(r"dim_labels=\w+_(\w+)->", op.attributes)
        if not kernel or not labels or "o" not in labels[1]:
            return 0.0
        # Each output element sums over the kernel's window and input
        # features: every kernel dimension but its output features.
        terms = math.prod(kernel) // kernel[labels[1].index("o")]
        return 2.0 * math.prod(_dims(op.shape)) * terms
    return 0.0


def flops(hlo: str) -> float:
    """FLOPs one run of a compiled program performs in matrix products, from
    its HLO text (per chip).

    Counts dots, convolutions and cuBLAS GEMM custom calls (2 × output
    elements × contracted elements), inside fusions and called computations,
    loop bodies times their trip count (once for a loop whose count depends
    on data), the costliest branch of a conditional. Elementwise work,
    reductions and custom kernels other than GEMMs are not counted: this is
    the matmul term of a roofline, for compilers that give no cost analysis
    (XLA:GPU compiling without a device).
    """
    return parsed_flops(parse(hlo))


def parsed_flops(computations: dict) -> float:
    memo: dict[str, float] = {}

    def count(name: str) -> float:
        if name in memo:
            return memo[name]
        memo[name] = 0.0  # a computation never calls itself; guards a cycle
        ops = computations.get(name, [])
        shapes = {o.name: o.shape for o in ops}
        total = 0.0
        for op in ops:
            code = op.opcode
            if code == "while":
                body = re.search(r"body=%([\w.\-]+)", op.attributes)[1]
                trips = _trip_count(computations, op)
                total += (1 if trips is None else trips) * count(body)
            elif code == "conditional":
                branches = re.findall(
                    r"%([\w.\-]+)",
                    " ".join(
                        re.findall(
                            r"(?:branch_computations=\{[^}]*\}|"
                            r"(?:true|false)_computation=%[\w.\-]+)",
                            op.attributes,
                        )
                    ),
                )
                total += max((count(b) for b in branches), default=0.0)
            elif code in ("fusion", "call", "async-start"):
                for called in re.findall(
                    r"(?:to_apply|calls)=%([\w.\-]+)", op.attributes
                ):
                    total += count(called)
            else:
                total += _product_flops(op, shapes)
        memo[name] = total
        return total

    return count("ENTRY")

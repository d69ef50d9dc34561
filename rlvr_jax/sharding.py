"""Device mesh, partition rules and batch placement for the learner and sampler.

The mesh has three named axes:

  data    pure data parallelism: parameters replicated, batch split.
  fsdp    fully sharded data parallelism: parameters, gradients and optimizer
          state split along their largest model dimension, batch split.
  tensor  Megatron-style model parallelism: attention heads, MLP width and
          vocabulary split (size 1 unless asked for).

Parameters are placed by a short rules table: the first regex that matches a
leaf's '/'-joined path (searched, so optimizer-state paths such as
`0/mu/layers/attn/q_kernel` match the same rule as the parameter) gives its
`PartitionSpec`. A spec entry whose mesh axes do not divide that dimension is
dropped (that dimension is replicated), so tiny test models with odd shapes and
small tensors such as biases always get a valid sharding.

Batches put their row axis over ('data', 'fsdp') and replicate the rest; `shard_batch` builds global arrays from each process's
local rows, so the same code runs on one host or a pod. Inside jitted code,
`constrain_rows` pins activations the same way.

The sampler may decode on a mesh of its own over the same devices
(`decode_mesh`: data = devices / T, tensor = T) with the packed decode
weights split over 'tensor' by `DECODE_RULES` (Megatron style: the fused
projections by their output rows, the output projections by their inputs,
the head by the vocabulary), so that a decode step reads 1/T of them per
chip and all-reduces its activations instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex on the '/'-joined leaf path, spec over the leaf's axes). The leading
# `l` axis of scanned per-layer tensors is never sharded: the scan slices it.
# Shapes in the comments use the model's axis legend (rlvr_jax/model/decoder.py).
PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r"(^|/)embed/embedding$", P("tensor", "fsdp")),  # [V, D]
    (r"(^|/)lm_head$", P("fsdp", "tensor")),  # [D, V]
    (r"(^|/)attn/(q|k|v)_kernel$", P(None, "fsdp", "tensor", None)),  # [L,D,N|K,H]
    (r"(^|/)attn/(q|k|v)_bias$", P(None, "tensor", None)),  # [L, N|K, H]
    (r"(^|/)attn/o_kernel$", P(None, "tensor", None, "fsdp")),  # [L, N, H, D]
    (r"(^|/)mlp/(gate|up)_kernel$", P(None, "fsdp", "tensor")),  # [L, D, F]
    (r"(^|/)mlp/down_kernel$", P(None, "tensor", "fsdp")),  # [L, F, D]
    (r"norm/scale$", P()),  # [L, D] or [D]: small, replicated
)


# Decode-layout weights (`rlvr_jax.rollout.decoding.Weights`, leaf paths such
# as 'layers/3/qkv_od') on a decode mesh. Matmul weights are [O, D] ("out,
# in"): splitting O splits a projection's outputs, splitting D its
# contraction (the partial sums are all-reduced). The fused q|k|v rows stay
# whole: [q heads | k heads | v heads] split into T contiguous blocks does not
# give each chip whole heads of one group (1.5B: 12 q + 2 k + 2 v heads of
# 128; T=2 puts q heads 0-7 on one chip, q 8-11 and every k, v head on the
# other), so attention (a tenth of the weights) stays replicated and the MLP
# and head, nine tenths, are split. Norms and biases are replicated.
DECODE_RULES: tuple[tuple[str, P], ...] = (
    (r"(^|/)gate_up_od$", P("tensor", None)),  # [2F, D]: gate|up outputs
    (r"(^|/)down_df$", P(None, "tensor")),  # [D, F]: contraction split
    (r"(^|/)head_vd$", P("tensor", None)),  # [V, D]: vocabulary split
    (r"(^|/)embed_vd$", P("tensor", None)),  # [V, D]: an untied lookup table
)
DECODE_TENSOR_SIZES = (2, 4, 8)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over all (or the given) devices.

    Args:
      data: size of the data axis; -1 takes whatever the other axes leave.
      fsdp: size of the fsdp axis; -1 allowed (at most one axis may be -1).
      tensor: size of the tensor axis; -1 allowed.
      devices: devices to use, all of `jax.devices()` (every process) if None.

    Raises:
      ValueError: the sizes do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"have {len(devices)}"
        )
    # jax.make_mesh orders devices so that the inner axes (fsdp, tensor) map to
    # the fastest interconnect on TPU/GPU; on CPU it is a plain reshape. Auto
    # axes: shardings are propagated by the compiler (GSPMD) from the jit
    # in/out shardings, so the model code needs no sharding annotations.
    return jax.make_mesh(
        tuple(sizes), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices
    )


def decode_mesh(mesh: Mesh, tensor: int) -> Mesh:
    """A ('data', 'fsdp', 'tensor') = (devices / T, 1, T) mesh over `mesh`'s
    devices in `mesh`'s order.

    The order is kept because a jitted call may not mix arrays whose devices
    are ordered differently (the prefill reads the learner's params beside
    the decode mesh's prompts). `jax.make_mesh` lays inner axes on the
    fastest links, so T consecutive devices are neighbours; each tensor group
    must lie within one host (one process), which is checked.

    Raises:
      ValueError: T is not 1, 2, 4 or 8, does not divide the devices, or a
        group of T devices spans hosts.
    """
    devices = np.asarray(mesh.devices).reshape(-1)
    if tensor not in (1, *DECODE_TENSOR_SIZES):
        raise ValueError(
            f"rollout.decode_mesh: tensor={tensor} must be one of "
            f"{', '.join(map(str, DECODE_TENSOR_SIZES))}"
        )
    if len(devices) % tensor:
        raise ValueError(
            f"rollout.decode_mesh: tensor={tensor} does not divide the "
            f"{len(devices)} devices"
        )
    groups = devices.reshape(-1, tensor)
    per_host = devices_per_host(devices)
    for group in groups:
        if len({d.process_index for d in group}) > 1:
            raise ValueError(
                f"rollout.decode_mesh: tensor={tensor} is more than the "
                f"{per_host} devices of a host (a tensor group must share a "
                "host's links)"
            )
    return Mesh(devices.reshape(-1, 1, tensor), AXES, axis_types=(AxisType.Auto,) * 3)


def devices_per_host(devices) -> int:
    """The fewest devices any one process (host) holds among `devices`."""
    counts: dict[int, int] = {}
    for d in np.asarray(devices).reshape(-1):
        counts[d.process_index] = counts.get(d.process_index, 0) + 1
    return min(counts.values())


def decode_shardings(abstract_weights: Any, mesh: Mesh) -> Any:
    """`NamedSharding`s of the packed decode weights (a pytree of arrays or
    ShapeDtypeStructs, e.g. `jax.eval_shape` of `decoding.pack`) on a decode
    mesh, by `DECODE_RULES`; with tensor = 1 every leaf is replicated."""
    return tree_shardings(abstract_weights, mesh, DECODE_RULES)


def path_str(path) -> str:
    """'/'-joined keys of a pytree key path, e.g. 'layers/attn/q_kernel'."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _axis_size(mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def fit_spec(spec: P, shape: Sequence[int], mesh) -> P:
    """`spec` with every entry that does not divide its dimension dropped.

    A spec longer than the array's rank (a scalar optimizer count matched by a
    parameter rule, say) gives full replication. `mesh` may be a `Mesh` or an
    `AbstractMesh`.
    """
    if len(spec) > len(shape):
        return P()
    fitted = []
    for dim, entry in zip(shape, spec):
        if entry is not None and dim % _axis_size(mesh, entry):
            entry = None
        fitted.append(entry)
    return P(*fitted)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, rules=PARAM_RULES) -> P:
    """The fitted spec of the first rule matching `path`; replicated if none."""
    for pattern, spec in rules:
        if re.search(pattern, path):
            return fit_spec(spec, shape, mesh)
    return P()


def tree_shardings(tree: Any, mesh: Mesh, rules=PARAM_RULES) -> Any:
    """`NamedSharding`s for every leaf of `tree` (arrays or ShapeDtypeStructs).

    Works for params, optimizer state and a whole train state alike: rules are
    searched in each leaf's path, and unmatched leaves (step counters, Adam's
    `count`) are replicated.
    """

    def one(path, leaf):
        spec = spec_for(path_str(path), np.shape(leaf), mesh, rules)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over ('data', 'fsdp'), everything else replicated (any rank ≥ 1)."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
    """The global row count of a batch must be a multiple of this."""
    return _axis_size(mesh, BATCH_AXES)


def constrain_rows(x: jax.Array) -> jax.Array:
    """Pins an activation's leading (row) axis to ('data', 'fsdp').

    Active only while tracing under a mesh with those axes
    (`jax.sharding.use_abstract_mesh`, as `grpo` does); a no-op otherwise, so
    unsharded callers are unaffected. Why: with weights split over 'fsdp'
    along their contraction dimension, GSPMD otherwise tends to keep the
    weights in place and all-reduce whole activations (e.g. every row's
    [B, T, V] logits) instead of gathering one layer's weights at a time.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, fit_spec(P(BATCH_AXES), x.shape, mesh))


def to_memory(tree: Any, kind: str) -> Any:
    """`tree`'s arrays moved to memory `kind` ('device', 'pinned_host'),
    each keeping its sharding.

    Raises:
      ValueError: a device of `tree` has no memory of that kind.
    """
    leaves = jax.tree.leaves(tree)
    for device in {d for x in leaves for d in x.sharding.device_set}:
        kinds = [m.kind for m in device.addressable_memories()]
        if kind not in kinds:
            raise ValueError(
                f"{device.platform} device {device.id} has no {kind!r} memory "
                f"(it has {kinds})"
            )
    return jax.device_put(
        tree, jax.tree.map(lambda x: x.sharding.with_memory_kind(kind), tree)
    )


def shard_batch(mesh: Mesh, local_batch: Any) -> Any:
    """Places a pytree of host numpy arrays onto the mesh, rows split.

    Multi-host: each process passes only its own rows (its share of the global
    batch, in process order); the global row count is the local count times
    `jax.process_count()`. On one process the local batch is the global batch.

    Args:
      mesh: the device mesh.
      local_batch: pytree of numpy arrays with a common leading row axis.

    Returns:
      the same pytree of global `jax.Array`s sharded by `batch_sharding`.

    Raises:
      ValueError: the global row count does not divide over ('data', 'fsdp').
    """
    sharding = batch_sharding(mesh)
    divisor = batch_divisor(mesh)

    def one(x):
        x = np.asarray(x)
        rows = x.shape[0] * jax.process_count()
        if rows % divisor:
            raise ValueError(
                f"global batch of {rows} rows does not split over "
                f"data×fsdp={divisor} devices; pad the batch"
            )
        global_shape = (rows, *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(one, local_batch)


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded arrays / ShapeDtypeStructs.

    Assumes every device holds an equal shard (true for `NamedSharding`).
    """
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return total


# ------------------------------------------------------------- multi-process
def process_rows(x: np.ndarray) -> np.ndarray:
    """This process's share of a global batch (all of it on one process).

    Every process holds the whole rollout on the host (scoring and advantages
    are cheap), but feeds only its own rows to `shard_batch`.
    """
    count, index = jax.process_count(), jax.process_index()
    rows = len(x) // count
    return x[index * rows : (index + 1) * rows]


def local_value(x: jax.Array) -> np.ndarray:
    """A replicated array's value, read from this process's own copy."""
    return np.asarray(x.addressable_data(0))


def to_host(tree: Any) -> Any:
    """Global device arrays as host numpy arrays, on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process; the same answer on every process.

    A SIGTERM reaches one worker of a pod first (or only one): the processes
    agree after each step, so all of them save the same step and stop.
    """
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.asarray(flag)).any())


def from_process_0(flags: list[bool]) -> list[bool]:
    """Process 0's values on every process.

    Evaluation decides from process 0's view of the workdir (which may be its
    local disk) what is left to do; the other processes follow it.
    """
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    said = multihost_utils.broadcast_one_to_all(np.asarray(flags, bool))
    return [bool(x) for x in np.asarray(said)]

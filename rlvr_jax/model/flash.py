"""The learner's attention through the TPU flash-attention kernel (Pallas).

Why: XLA computes cache-free attention as matmul → softmax → matmul, and
each [block, T] fp32 score block and its probabilities go through HBM: in
the forward, in the layer's checkpointed recompute, and several times in the
backward. At π1's learner width (4,096) that is most of a train step's HBM
traffic: on v5e:2x4 the plan counts 56.0 TB per chip per update with the
einsums, 17.8 TB with this kernel (docs/plan.md). The kernel keeps
every score tile on chip and reads Q, K and V once per pass.

The math is `model.dot_attention`'s for a cache-free call: causal by slot,
within a segment, softmax in fp32. The difference is padding queries: the
kernel gives a padding query (segment 0) the keys of segment 0 before it
instead of a uniform softmax; their rows are never attended to by a real
query nor scored, so every real query's output and every gradient through
one are the same.

Tiles. Each grid step of the kernel fetches the blocks its index maps name,
and a block whose index does not change from one step to the next is not
fetched again. The "major" blocks that the inner kernel loops over are
therefore the whole sequence (up to `MAJOR_MAX` columns): K and V (forward,
dQ) and Q, dO and the softmax statistics (dK/dV) are read once per row and
head, so the HBM bytes of a kernel are its operands and outputs
(`plan.hbm_bytes` counts them so). Those windows need more on-chip memory
than v4 and v5p let a kernel use (`ROOMY_CHIPS`); and past MAJOR_MAX
columns the major tiles split, one side is read again per tile of the
other, and the plan's byte count is low. `supports` says where the tiles
are whole rows, which is where `model.attention=auto` takes the kernel.

The kernel runs on TPU only (Mosaic); `jax.experimental.pallas.tpu`'s
interpret mode runs it on CPU for tests.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rlvr_jax import sharding as sharding_lib

LANES = 128  # a TPU vreg's lane count: tiles and the head dim align to it
MINOR = 512  # query and key columns per inner tile
MAJOR_MAX = 4096  # columns held on chip at once (see the module docstring)


# Chips whose compiler lets one kernel use the on-chip memory these tiles
# need (about 24 MB of windows at 4,096 columns: Q, dO, the fp32 softmax
# statistics and segment ids of a whole row, double-buffered). v4 and v5p
# allow a kernel 16 MiB and refuse them.
ROOMY_CHIPS = ("TPU v5 lite", "TPU v6 lite")


def supports(head_dim: int, width: int | None = None, device_kind: str = "") -> bool:
    """Whether the kernel tiles this head dim (a whole number of lanes) and,
    when given, rows of `width` columns on a chip of `device_kind` with
    whole-row tiles (width up to MAJOR_MAX, a chip in ROOMY_CHIPS)."""
    if head_dim % LANES:
        return False
    if width is not None and width > MAJOR_MAX:
        return False
    return not device_kind or device_kind in ROOMY_CHIPS


def _pallas_flash():
    # Imported when first used: runs that never take the kernel (CPU, GPU)
    # do not load Pallas's TPU modules.
    from jax.experimental.pallas.ops.tpu import flash_attention

    return flash_attention


def block_sizes(t: int):
    """The kernel's `BlockSizes` for T = `t` columns (a multiple of LANES)."""
    minor = math.gcd(t, MINOR)
    major = next(
        m
        for m in (t, MAJOR_MAX, 2048, 1024, 512, minor)
        if m <= MAJOR_MAX and t % m == 0 and m % minor == 0
    )
    return _pallas_flash().BlockSizes(
        block_q=minor,
        block_k_major=major,
        block_k=minor,
        block_b=1,
        block_q_major_dkv=major,
        block_k_major_dkv=minor,
        block_k_dkv=minor,
        block_q_dkv=minor,
        block_k_major_dq=major,
        block_k_dq=minor,
        block_q_dq=minor,
    )


def attention(q_btkgh, k_btkh, v_btkh, seg_bt):
    """Causal attention of T queries over the same T slots, [B, T, K, G, H].

    `seg_bt` (int [B, T], 0 = padding) is each slot's segment, for queries
    and keys alike: a query sees the keys of its segment up to itself. The
    output has the inputs' dtype (the model's compute dtype). Under the
    learner's abstract mesh, rows are split over ('data', 'fsdp') and heads
    over 'tensor', and the kernel runs on each chip's share
    (`jax.shard_map`: the partitioner cannot split a custom kernel itself).
    """
    b, t, k, g, h = q_btkgh.shape
    if not supports(h):
        raise ValueError(
            f"flash attention needs a head dim multiple of {LANES}, got {h}"
        )
    pad = -t % LANES
    # [B, T, K, G, H] -> [B, N, T, H] with n = k·G + g, as the model's heads.
    q_bnth = q_btkgh.reshape(b, t, k * g, h).transpose(0, 2, 1, 3)
    # One copy of each kv head per query head of its group (GQA).
    k_bnth = jnp.repeat(k_btkh.transpose(0, 2, 1, 3), g, axis=1)
    v_bnth = jnp.repeat(v_btkh.transpose(0, 2, 1, 3), g, axis=1)
    seg_bt = jnp.asarray(seg_bt, jnp.int32)
    if pad:  # trailing padding columns: segment 0, dropped below
        q_bnth, k_bnth, v_bnth = (
            jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)))
            for x in (q_bnth, k_bnth, v_bnth)
        )
        seg_bt = jnp.pad(seg_bt, ((0, 0), (0, pad)))
    sizes = block_sizes(t + pad)

    pallas_flash = _pallas_flash()

    def kernel(q, k, v, seg):
        return pallas_flash.flash_attention(
            q,
            k,
            v,
            segment_ids=pallas_flash.SegmentIds(seg, seg),
            causal=True,
            sm_scale=1.0 / math.sqrt(h),
            block_sizes=sizes,
        )

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and set(sharding_lib.AXES) <= set(mesh.axis_names):
        # Rows as the learner splits them; heads over 'tensor' when it
        # divides them (the projections split heads so).
        rows, heads = sharding_lib.fit_spec(
            P(sharding_lib.BATCH_AXES, "tensor"), (b, k * g), mesh
        )
        kernel = jax.shard_map(
            kernel,
            mesh=mesh,
            in_specs=(P(rows, heads),) * 3 + (P(rows),),
            out_specs=P(rows, heads),
            check_vma=False,
        )
    out_bnth = kernel(q_bnth, k_bnth, v_bnth, seg_bt)[:, :, :t]
    return out_bnth.transpose(0, 2, 1, 3).reshape(b, t, k, g, h)

"""Train-step throughput of `rlvr_jax.grpo` as a fraction of measured matmul peak.

Runs the jitted, donated GRPO train step (forward, chunked log-softmax at
τ = 0.6, clipped loss with KL and entropy, backward, AdamW) on random weights
at the Qwen2.5-0.5B shape cut to a few layers, and prints the achieved model
FLOP/s divided by the machine's matmul peak, measured in this same script with
a large jitted matmul in the same compute dtype ("MFU").

    python benchmarks/learner.py                           # 4 layers, 8 x 512
    python benchmarks/learner.py --batch 2 --seq 256       # shrunk, slow hosts
    python benchmarks/learner.py --dtype bfloat16          # accelerators

Model FLOPs per step (PaLM, appendix B): 6 · N · tokens for the matmuls, N the
parameter count (the tied embedding counted once, as the head's matmul), plus
12 · layers · heads · head_dim · T per token for attention scores and values.
Recomputation (per-layer remat, the head chunks' checkpoint) is not counted:
it is overhead, and MFU says so. The peak is the best of several square
matmuls, measured before and after the train step. Two ratios are printed:
per wall-clock second (the usual MFU) and per CPU-second of this process,
which stays meaningful when other processes share the host's cores.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import grpo, optimizer
from rlvr_jax import model as M
from rlvr_jax import sharding as S


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """Best FLOP/s of an n × n × n jitted matmul in `dtype`: (per wall second,
    per CPU second of this process)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    runs = [_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats)]
    flops = 2 * n**3
    return flops / min(w for w, _ in runs), flops / min(c for _, c in runs)


def model_flops(config: M.ModelConfig, n_params: int, rows: int, seq: int) -> float:
    tokens = rows * seq
    attention = 12 * config.n_layers * config.n_heads * config.head_dim * seq
    return (6 * n_params + attention) * tokens


def synthetic_batch(rows: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """Half prompt (left-padded), half response (right-padded), ragged rows."""
    rng = np.random.default_rng(seed)
    p = seq // 2
    tokens = rng.integers(0, vocab, (rows, seq)).astype(np.int32)
    col = np.arange(seq)[None]
    prompt_len = rng.integers(p // 2, p + 1, (rows, 1))
    resp_len = rng.integers((seq - p) // 2, seq - p + 1, (rows, 1))
    mask = (col >= p - prompt_len) & (col < p + resp_len)
    loss_mask = (col >= p) & (col < p + resp_len)
    return dict(
        tokens=tokens,
        mask=mask,
        loss_mask=loss_mask,
        advantages=rng.normal(size=rows).astype(np.float32),
        old_logp=np.zeros((rows, seq), np.float32),
        ref_logp=np.zeros((rows, seq), np.float32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="rows per step")
    parser.add_argument("--seq", type=int, default=512, help="prompt + response")
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--logits-chunk", type=int, default=128)
    parser.add_argument("--dtype", default="float32", help="compute dtype")
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    args = parser.parse_args()

    config = M.ModelConfig.qwen2_5_0_5b(n_layers=args.layers, dtype=args.dtype)
    learner = grpo.LearnerConfig(
        micro_batch_size=args.micro_batch,
        logits_chunk=args.logits_chunk,
        remat=not args.no_remat,
        recompute_old_logp=True,
    )
    mesh = S.make_mesh()
    tx = optimizer.adamw(1e-6)

    load_before = os.getloadavg()[0]
    peak_before = matmul_peak(args.dtype)
    state = grpo.init_train_state(config, tx, mesh, rng=jax.random.key(0))
    n_params = M.count_params(state.params)
    batch = S.shard_batch(
        mesh, synthetic_batch(args.batch, args.seq, config.vocab_size)
    )
    step = grpo.jit_train_step(config, learner, tx, mesh)

    def run():
        nonlocal state
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        run.metrics = metrics

    first, _ = _timed(run)
    times = [_timed(run) for _ in range(args.steps)]
    peak_after = matmul_peak(args.dtype)
    peak_wall = max(peak_before[0], peak_after[0])
    peak_cpu = max(peak_before[1], peak_after[1])

    step_wall = min(w for w, _ in times)
    step_cpu = min(c for _, c in times)
    flops = model_flops(config, n_params, args.batch, args.seq)
    print(
        f"devices {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({os.cpu_count()} cores), {args.layers} layers, "
        f"{n_params / 1e6:.1f}M params, dtype {args.dtype}, batch {args.batch} x "
        f"{args.seq}, micro-batch {args.micro_batch or args.batch}, remat "
        f"{not args.no_remat}, logits chunk {args.logits_chunk}"
    )
    print(
        f"first step (compile + run) {first:.1f} s; step {step_wall:.2f} s wall, "
        f"{step_cpu:.2f} s CPU (best of {args.steps}); "
        f"loss {float(run.metrics['loss']):.4f}"
    )
    print(
        f"tokens/s {args.batch * args.seq / step_wall:.0f}; model FLOPs/step "
        f"{flops / 1e12:.3f} T; achieved {flops / step_wall / 1e9:.1f} GFLOP/s; "
        f"matmul peak {peak_wall / 1e9:.1f} GFLOP/s"
    )
    print(f"MFU {flops / step_wall / peak_wall:.1%} (wall clock)")
    # On a shared host other processes steal cores from the long train step
    # more than from the short peak matmuls; per CPU-second of this process
    # both rates are immune to that (but blind to idle cores of our own).
    print(
        f"MFU {flops / step_cpu / peak_cpu:.1%} (per process CPU-second); "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )


if __name__ == "__main__":
    main()

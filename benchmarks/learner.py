"""Train-step throughput of `rlvr_jax.grpo` as a fraction of measured matmul peak.

Runs the jitted, donated GRPO train step (forward, chunked log-softmax at
τ = 0.6, clipped loss with KL and entropy, backward, AdamW) on random weights
at the Qwen2.5-0.5B shape cut to a few layers, and prints the achieved model
FLOP/s divided by the machine's matmul peak, measured in this same script with
a large jitted matmul in the same compute dtype ("MFU").

    python benchmarks/learner.py                           # 4 layers, 8 x 512
    python benchmarks/learner.py --batch 2 --seq 256       # shrunk, slow hosts
    python benchmarks/learner.py --dtype bfloat16          # accelerators
    python benchmarks/learner.py --token-efficiency        # packing, no model
    python benchmarks/learner.py --phase                   # before/after ratio

`--token-efficiency` replays a long-tailed response-length distribution
(lognormal, median 350, p99 ≈ 1,600, capped at 3,072; prompts of ~150
tokens; groups of 8, 128 responses per step) through the learner's batch
builders and prints real tokens / processed tokens for the unpacked layout
(one sequence per row, prompt bucket + power-of-two response bucket) and the
packed one (rlvr_jax/learner/packing.py), at a few micro-batch granularities.

`--phase` times one learner phase (the old and reference log-prob passes,
then the update) of a small Qwen2 (2 layers, width 64) with the real 151,936
vocabulary on 8 responses to a real-length prompt (bucket 256), before
(unpacked rows, LM head at every position) and after (packed rows, head only
at response positions), in one process, and prints the ratio.

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

from rlvr_jax import grpo
from rlvr_jax import sharding as S
from rlvr_jax.learner import optimizer, packing
from rlvr_jax.model import decoder as M


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


# ------------------------------------------------------- token efficiency
PROMPT_BUCKET = 256  # the smallest pi1 prompt bucket: every ~150-token prompt
MAX_NEW = 3072


def long_tailed_lengths(rng, count: int) -> np.ndarray:
    """Response lengths: lognormal, median 350, p99 ≈ 1,600, in [1, 3072]."""
    sigma = np.log(1600 / 350) / 2.326  # p99 of a normal is 2.326 σ
    lengths = np.exp(rng.normal(np.log(350), sigma, count)).round()
    return np.clip(lengths, 1, MAX_NEW).astype(np.int64)


def step_sequences(rng, responses: int = 128, group: int = 8):
    """One step's prompts (~150 tokens, shared by a group) and responses."""
    prompt_lens = np.clip(rng.normal(150, 30, responses // group), 20, PROMPT_BUCKET)
    prompts = [np.ones(int(n), np.int32) for n in prompt_lens for _ in range(group)]
    resp = [np.ones(n, np.int32) for n in long_tailed_lengths(rng, responses)]
    return prompts, resp


def unpacked_efficiency(prompts, responses) -> float:
    """Real / processed tokens of the unpacked learner batch: every row is the
    prompt bucket + the power-of-two bucket of the longest response."""
    real = sum(len(p) + len(r) for p, r in zip(prompts, responses))
    width = PROMPT_BUCKET + packing.width_for(max(map(len, responses)), MAX_NEW)
    return real / (len(responses) * width)


def token_efficiency(steps: int) -> None:
    rng = np.random.default_rng(0)
    runs = [step_sequences(rng) for _ in range(steps)]
    lengths = np.concatenate([[len(r) for r in resp] for _, resp in runs])
    print(
        f"{steps} steps x 128 responses: response length median "
        f"{np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, p99 "
        f"{np.percentile(lengths, 99):.0f}, max {lengths.max()}"
    )
    print(
        f"unpacked (power-of-two padded): {np.mean([unpacked_efficiency(*r) for r in runs]):.3f}"
    )
    limit = PROMPT_BUCKET + MAX_NEW
    # (devices, token budget per device): one row per micro-batch; pi1's
    # default on a v5e-8 (micro_batch_size 16 over 8 devices = 2 widest rows).
    for divisor, rows_per_device in ((1, 1), (8, 1), (8, 2)):
        eff, shapes = [], set()
        for prompts, resp in runs:
            adv = np.zeros(len(resp), np.float32)
            b = packing.pack(
                prompts,
                resp,
                adv,
                agg="token-mean",
                limit=limit,
                max_tokens=rows_per_device * limit,
                divisor=divisor,
            )
            eff.append(packing.token_efficiency(b))
            shapes.add(b["tokens"].shape)
        print(
            f"packed, {divisor} device(s), {rows_per_device} row(s) per device and "
            f"micro-batch: {np.mean(eff):.3f} (min {min(eff):.3f}; "
            f"{len(shapes)} distinct batch shapes)"
        )


# --------------------------------------------------------- learner phase
def phase_batches(vocab: int, responses: int = 8, resp_len: int = 16):
    """One prompt of ~150 real tokens (bucket 256) and `responses` responses,
    as the unpacked batch (before) and the packed one (after)."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, vocab, 150).astype(np.int32)
    resp = [
        rng.integers(0, vocab, rng.integers(resp_len // 2, resp_len + 1))
        for _ in range(responses)
    ]
    adv = rng.normal(size=responses).astype(np.float32)
    width = PROMPT_BUCKET + resp_len
    tokens = np.zeros((responses, width), np.int32)
    mask = np.zeros((responses, width), bool)
    loss_mask = np.zeros((responses, width), bool)
    p0 = PROMPT_BUCKET - len(prompt)
    for i, r in enumerate(resp):
        tokens[i, p0 : PROMPT_BUCKET + len(r)] = np.concatenate([prompt, r])
        mask[i, p0 : PROMPT_BUCKET + len(r)] = True
        loss_mask[i, PROMPT_BUCKET : PROMPT_BUCKET + len(r)] = True
    before = dict(tokens=tokens, mask=mask, loss_mask=loss_mask, advantages=adv)
    after = packing.pack([prompt] * responses, resp, adv, agg="token-mean", limit=width)
    return before, after


def learner_phase(steps: int) -> None:
    config = M.ModelConfig.qwen2_5_math_1_5b(
        n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128,
        dtype="float32",
    )  # fmt: skip
    # Two head chunks of the unpacked 272-column rows, so neither side pads.
    learner = grpo.LearnerConfig(recompute_old_logp=False, logits_chunk=136)
    mesh = S.make_mesh(devices=jax.devices()[:1])
    tx = optimizer.adamw(1e-6)
    state = grpo.init_train_state(config, tx, mesh, rng=jax.random.key(0))
    reference = jax.tree.map(jnp.copy, state.params)
    step = grpo.jit_train_step(config, learner, tx, mesh)
    logprobs = grpo.jit_logprobs(config, learner, mesh)
    before, after = phase_batches(config.vocab_size)

    def phase(host_batch):
        nonlocal state
        batch = S.shard_batch(mesh, host_batch)
        batch["old_logp"] = logprobs(state.params, batch)
        batch["ref_logp"] = logprobs(reference, batch)
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)

    times = {}
    for name, b in (("before", before), ("after", after)):
        first, _ = _timed(lambda b=b: phase(b))
        runs = [_timed(lambda b=b: phase(b)) for _ in range(steps)]
        times[name] = min(w for w, _ in runs), min(c for _, c in runs)
        print(
            f"{name}: batch {b['tokens'].shape}, head positions "
            f"{b['head_cols'].size if 'head_cols' in b else b['tokens'].size}; "
            f"first phase (compile + run) {first:.1f} s; phase {times[name][0]:.2f} s "
            f"wall, {times[name][1]:.2f} s CPU (best of {steps})"
        )
    print(
        f"learner phase, vocab {config.vocab_size}: after / before = "
        f"{times['after'][0] / times['before'][0]:.3f} (wall), "
        f"{times['after'][1] / times['before'][1]:.3f} (CPU); speed-up "
        f"{times['before'][0] / times['after'][0]:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--token-efficiency", action="store_true")
    parser.add_argument("--phase", action="store_true")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="rows per step")
    parser.add_argument("--seq", type=int, default=512, help="prompt + response")
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--logits-chunk", type=int, default=128)
    parser.add_argument("--dtype", default="float32", help="compute dtype")
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    args = parser.parse_args()
    if args.token_efficiency:
        return token_efficiency(steps=20)
    if args.phase:
        return learner_phase(args.steps)

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

"""Decode throughput of `rlvr_jax.sampler` vs `transformers` generate, same CPU.

Both run greedy decoding of the same random weights at the Qwen2.5-0.5B shape
on the same batch (8 prompts x 64 tokens, 128 new tokens, EOS disabled), in
this one process. The script prints generated tokens/s for each and their
ratio, plus yardsticks measured here:

  * the bandwidth bound: the bytes of weights one decode step must read
    divided by the machine's read bandwidth (a streaming reduction over 1 GiB);
  * the compute bound: the step's matmul FLOPs divided by the machine's
    measured dense fp32 matmul rate (a large square matmul). At 8 rows a
    decode step does 2 * 8 FLOPs per weight read (4 per fp32 byte), so on a
    CPU with few cores this bound, not bandwidth, can be the binding one;
  * the matmul floors: the same weight matmuls a decode step performs, alone
    in a jitted loop, once as dots on the learner's [in, out] weights and once
    through `decoding.project` on the sampler's packed [out, in] weights
    (both dots now; `project` was a multiply-reduce on CPU, 2-4x faster than
    the dots there, until XLA:CPU was found to compile it wrongly inside a
    many-row decode step: see `rlvr_jax/rollout/decoding.py`).

    python benchmarks/sampler.py                       # fp32, the full shape
    python benchmarks/sampler.py --dtype bfloat16
    python benchmarks/sampler.py --layers 6 --new 32   # shrunk, for slow hosts

Decode time per step is (time(N new) - time(1 new)) / (N - 1), so the prefill
is excluded from the per-step figure; end-to-end tokens/s include it. fp32 is
the default because XLA:CPU has no native bf16 dot (the sampler stores bf16
weights as fp32 there); on accelerators use --dtype bfloat16. No XLA flags are
set: this measures what a user of the library gets.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sampler
from rlvr_jax.model import decoder as model
from rlvr_jax.model import params
from rlvr_jax.rollout import decoding, static


def _timed(fn, repeats: int, warmup: bool = True) -> float:
    """Best wall time of `repeats` calls (after one warm-up call)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of a jitted sum and a numpy sum.

    Both stream a buffer far larger than the caches once per call; a
    reduction does one add per element, well under the CPU's compute rate.
    """
    n = int(gib * 2**30) // 4
    x = jnp.ones((n,), jnp.float32)
    total = jax.jit(lambda a: jnp.sum(a, dtype=jnp.float32))
    jax_s = _timed(lambda: total(x).block_until_ready(), repeats)
    y = np.ones((n,), np.float32)
    np_s = _timed(lambda: y.sum(), repeats)
    return n * 4 / min(jax_s, np_s)


def measure_matmul_rate(repeats: int = 3) -> float:
    """Dense fp32 matmul FLOP/s: a jitted [1024, 2048] x [2048, 4096] product."""
    m, k, n = 1024, 2048, 4096
    a = jnp.ones((m, k), jnp.float32)
    b = jnp.ones((k, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return 2 * m * k * n / _timed(lambda: dot(a, b).block_until_ready(), repeats)


def _loop_seconds(step, args, x_bd, repeats: int) -> float:
    """Seconds per call of `step(*args, x)` inside a jitted fori_loop.

    A loop of steps, like the sampler's, so loop-invariant work (e.g. weight
    conversions) is hoisted alike; each step's output feeds the next, so no
    step can be skipped or hoisted.
    """
    steps = 8
    loop = jax.jit(
        lambda args, x_bd: jax.lax.fori_loop(
            0, steps, lambda _, x: step(*args, x), x_bd
        )
    )
    return _timed(lambda: loop(args, x_bd).block_until_ready(), repeats) / steps


def packed_matmul_floor(config, jax_params, batch: int, repeats: int) -> float:
    """Seconds for one decode step's matmuls through `decoding.project`.

    The sampler's own projections on its packed weights (fused q|k|v and
    gate|up, [out, in] layout, head), with no attention, norms or sampling.
    """
    weights = decoding.pack(
        config, jax_params, sampler.decode_weights_dtype(config, jax_params)
    )
    m = config.n_heads * config.head_dim

    def step(weights, x_bd):
        for w in weights.layers:
            qkv = decoding.project(x_bd, w.qkv_od)
            x_bd = x_bd + decoding.project(qkv[:, :m], w.o_dm)
            gate_up = decoding.project(x_bd, w.gate_up_od)
            x_bd = x_bd + decoding.project(gate_up[:, : config.mlp_dim], w.down_df)
            x_bd = x_bd * jax.lax.rsqrt(jnp.mean(x_bd * x_bd, -1, keepdims=True))
        logits_bv = decoding.project(x_bd, weights.head_vd, jnp.float32)
        return x_bd + logits_bv[:, : x_bd.shape[1]].astype(x_bd.dtype)

    x_bd = jnp.ones((batch, config.d_model), config.dtype)
    return _loop_seconds(step, (weights,), x_bd, repeats)


def matmul_floor(config, jax_params, batch: int, repeats: int) -> float:
    """Seconds for one decode step's weight matmuls as dots, in one jit.

    The same [batch, d] x weight products a decode step performs (q, k, v, o,
    gate, up, down per layer, then the head) as `jnp.dot`s on the learner's
    [in, out] weights, with no attention or sampling: what this backend's dot
    kernels can do.
    """
    p = sampler.compute_dtype_params(config, jax_params)
    n_out = lambda w: w.reshape(w.shape[0], w.shape[1], -1)  # [L, in, out]
    layers = p["layers"]
    stacked = {
        "q": n_out(layers["attn"]["q_kernel"]),
        "k": n_out(layers["attn"]["k_kernel"]),
        "v": n_out(layers["attn"]["v_kernel"]),
        "o": layers["attn"]["o_kernel"].reshape(config.n_layers, -1, config.d_model),
        "gate": layers["mlp"]["gate_kernel"],
        "up": layers["mlp"]["up_kernel"],
        "down": layers["mlp"]["down_kernel"],
    }
    per_layer = [
        jax.tree.map(lambda w, i=i: w[i], stacked) for i in range(config.n_layers)
    ]

    def step(per_layer, embedding_vd, x_bd):
        for w in per_layer:
            kv = (x_bd @ w["k"]).sum() + (x_bd @ w["v"]).sum()
            x_bd = x_bd + (x_bd @ w["q"]) @ w["o"] + kv.astype(x_bd.dtype)
            x_bd = x_bd + (jax.nn.silu(x_bd @ w["gate"]) * (x_bd @ w["up"])) @ w["down"]
            x_bd = x_bd * jax.lax.rsqrt(jnp.mean(x_bd * x_bd, -1, keepdims=True))
        logits_bv = jnp.einsum(
            "bd,vd->bv", x_bd, embedding_vd, preferred_element_type=jnp.float32
        )
        return x_bd + logits_bv[:, : x_bd.shape[1]].astype(x_bd.dtype)

    x_bd = jnp.ones((batch, config.d_model), config.dtype)
    args = (per_layer, p["embed"]["embedding"])
    return _loop_seconds(step, args, x_bd, repeats)


def _build(args, path: str):
    """Random HF model of the requested shape, saved and loaded by both sides."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = model.ModelConfig.qwen2_5_0_5b(n_layers=args.layers, eos_token_ids=())
    torch.manual_seed(0)
    hf_config = Qwen2Config(**config.to_hf(), attn_implementation="sdpa")
    hf = Qwen2ForCausalLM(hf_config).eval()
    hf.save_pretrained(path)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    hf = hf.to(torch_dtype)
    # fp32 master weights, as the learner holds them; the sampler casts once.
    config, jax_params = params.load_hf(path, np.float32, compute_dtype=args.dtype)
    return config, jax_params, hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="new tokens")
    parser.add_argument("--layers", type=int, default=24, help="24 = Qwen2.5-0.5B")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default="float32",
        help="compute/cache dtype of both sides (XLA:CPU has no native bf16 dot)",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); "
        f"torch {torch.__version__} threads={torch.get_num_threads()}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    bandwidth = measure_bandwidth()
    print(f"measured read bandwidth: {bandwidth / 1e9:.1f} GB/s")

    with tempfile.TemporaryDirectory() as path:
        config, jax_params, hf = _build(args, path)
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, config.vocab_size, (args.batch, args.prompt))
    tokens_bt = jnp.asarray(prompts, jnp.int32)
    mask_bt = jnp.ones(prompts.shape, bool)
    key = jax.random.key(0)

    def jax_run(new: int):
        settings = sampler.SamplingSettings(
            max_new_tokens=new, temperature=0.0, cache_dtype=args.dtype
        )
        # Compile ahead of time so that no timed call includes compilation;
        # each timed call prepares (casts and packs) the weights, as a
        # rollout does.
        prepared = sampler.prepare(config, jax_params)
        compiled = static._sample_jit.lower(
            config, prepared, tokens_bt, mask_bt, key, 0, settings=settings
        ).compile()
        del prepared
        return lambda: jax.block_until_ready(
            compiled(sampler.prepare(config, jax_params), tokens_bt, mask_bt, key, 0)
        )

    def hf_run(new: int):
        ids = torch.as_tensor(prompts)

        def run():
            with torch.no_grad():
                return hf.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    eos_token_id=None,
                    pad_token_id=0,
                )

        return run

    weight_bytes = sum(
        x.size * jnp.dtype(args.dtype).itemsize for x in jax.tree.leaves(jax_params)
    )
    cache_bytes = (
        2
        * config.n_layers
        * args.batch
        * (args.prompt + args.new)
        * config.n_kv_heads
        * config.head_dim
        * jnp.dtype(args.dtype).itemsize
    )
    generated = args.batch * args.new
    print(
        f"shape: Qwen2.5-0.5B layers={config.n_layers} d={config.d_model} "
        f"vocab={config.vocab_size}; batch={args.batch} prompt={args.prompt} "
        f"new={args.new} dtype={args.dtype}"
    )
    print(
        f"weights read per decode step: {weight_bytes / 2**20:.0f} MiB "
        f"(+ KV cache up to {cache_bytes / 2**20:.1f} MiB)"
    )
    matmul_flops = (
        2 * args.batch * sum(x.size for x in jax.tree.leaves(jax_params) if x.ndim >= 2)
    )
    rate = measure_matmul_rate()
    compute_s = matmul_flops / rate
    print(
        f"matmul FLOPs per decode step: {matmul_flops / 1e9:.2f} G; dense fp32 "
        f"matmul rate {rate / 1e9:.0f} GFLOP/s; compute bound "
        f"{compute_s * 1e3:.1f} ms/step"
    )
    repeats = max(args.repeats, 3)
    floors = {
        "dots on [in, out] weights": matmul_floor(
            config, jax_params, args.batch, repeats
        ),
        "decoding.project": packed_matmul_floor(
            config, jax_params, args.batch, repeats
        ),
    }

    results = {}
    for name, run in (("rlvr_jax", jax_run), ("transformers", hf_run)):
        if name == "transformers" and args.skip_hf:
            continue
        # The short run warms up (threads, allocator, HF kernels) for both.
        prefill_s = _timed(run(1), args.repeats)
        full_s = _timed(run(args.new), args.repeats, warmup=False)
        step_s = (full_s - prefill_s) / (args.new - 1)
        results[name] = (full_s, step_s)
        print(
            f"{name:>12}: {generated / full_s:7.1f} tok/s end-to-end "
            f"({full_s:.2f} s), decode {step_s * 1e3:.1f} ms/step = "
            f"{args.batch / step_s:.1f} tok/s"
        )

    # Bandwidth drifts on a shared host: measure it again and take the higher
    # figure, i.e. the stricter bound.
    after = measure_bandwidth()
    print(f"read bandwidth after the runs: {after / 1e9:.1f} GB/s")
    bound_s = weight_bytes / max(bandwidth, after)
    print(
        f"bandwidth bound {bound_s * 1e3:.1f} ms/step; compute bound "
        f"{compute_s * 1e3:.1f} ms/step"
    )
    for what, floor_s in floors.items():
        print(
            f"matmul floor, {what} (the step's matmuls alone): "
            f"{floor_s * 1e3:.1f} ms/step, {floor_s / bound_s:.2f}x the "
            "bandwidth bound"
        )
    for name, (_, step_s) in results.items():
        print(
            f"{name:>12} decode step: {step_s / bound_s:.2f}x the bandwidth "
            f"bound, {step_s / max(bound_s, compute_s):.2f}x the larger bound"
        )
    if "transformers" in results:
        ours, theirs = results["rlvr_jax"], results["transformers"]
        print(
            f"speed-up vs transformers: end-to-end {theirs[0] / ours[0]:.2f}x, "
            f"decode step {theirs[1] / ours[1]:.2f}x"
        )


if __name__ == "__main__":
    main()

"""Decode throughput of `rlvr_jax.sampler` vs `transformers` generate, same CPU.

Both run greedy decoding of the same random weights at the Qwen2.5-0.5B shape
on the same batch (8 prompts x 64 tokens, 128 new tokens, EOS disabled), in
this one process. The script prints generated tokens/s for each and their
ratio, plus two yardsticks measured here:

  * the roofline: the bytes of weights one decode step must read divided by
    the machine's read bandwidth (a streaming reduction over 1 GiB);
  * the matmul floor: the same weight matmuls a decode step performs, alone in
    a jitted loop, i.e. what this backend's matmul kernels can do.

    python benchmarks/sampler.py                       # fp32, the full shape
    python benchmarks/sampler.py --dtype bfloat16
    python benchmarks/sampler.py --layers 6 --new 32   # shrunk, for slow hosts

Decode time per step is (time(N new) - time(1 new)) / (N - 1), so the prefill
is excluded from the per-step figure; end-to-end tokens/s include it. fp32 is
the default because XLA:CPU has no native bf16 dot (it upcasts the weights);
on accelerators use --dtype bfloat16.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

# XLA:CPU's XNNPACK dot kernels reach the memory bandwidth on skinny decode
# matmuls where the default Eigen path does not; set before jax initialises.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_use_xnnpack=true")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlvr_jax import model, params, sampler  # noqa: E402


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


def matmul_floor(config, jax_params, batch: int, repeats: int) -> float:
    """Seconds for one decode step's weight matmuls alone, in one jit.

    The same [batch, d] x weight products a decode step performs (q, k, v, o,
    gate, up, down per layer, then the head), on the same weights, with no
    attention, sampling or loop: what this backend's matmul kernels can do.
    """
    p = sampler.decode_params(config, jax_params)
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
    x_bd = jnp.ones((batch, config.d_model), config.dtype)

    def step(per_layer, embedding_vd, x_bd):
        for w in per_layer:
            kv = (x_bd @ w["k"]).sum() + (x_bd @ w["v"]).sum()
            x_bd = x_bd + (x_bd @ w["q"]) @ w["o"] + kv.astype(x_bd.dtype)
            x_bd = x_bd + (jax.nn.silu(x_bd @ w["gate"]) * (x_bd @ w["up"])) @ w["down"]
            x_bd = x_bd * jax.lax.rsqrt(jnp.mean(x_bd * x_bd, -1, keepdims=True))
        logits_bv = jnp.einsum(
            "bd,vd->bv", x_bd, embedding_vd, preferred_element_type=jnp.float32
        )
        # Feed the logits back so no step can be skipped or hoisted.
        return x_bd + logits_bv[:, : x_bd.shape[1]].astype(x_bd.dtype)

    # A loop of steps, like the sampler's, so loop-invariant work (e.g. the
    # weight upcasts XLA:CPU inserts for bf16 dots) is hoisted alike.
    steps = 8
    loop = jax.jit(
        lambda per_layer, embedding_vd, x_bd: jax.lax.fori_loop(
            0, steps, lambda _, x: step(per_layer, embedding_vd, x), x_bd
        )
    )
    embedding_vd = p["embed"]["embedding"]
    total_s = _timed(
        lambda: loop(per_layer, embedding_vd, x_bd).block_until_ready(), repeats
    )
    return total_s / steps


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
        # Compile ahead of time so that no timed call includes compilation.
        compiled = sampler._sample_jit.lower(
            config, jax_params, tokens_bt, mask_bt, key, 0, settings=settings
        ).compile()
        return lambda: jax.block_until_ready(
            compiled(jax_params, tokens_bt, mask_bt, key, 0)
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
    bound_s = weight_bytes / bandwidth
    generated = args.batch * args.new
    print(
        f"shape: Qwen2.5-0.5B layers={config.n_layers} d={config.d_model} "
        f"vocab={config.vocab_size}; batch={args.batch} prompt={args.prompt} "
        f"new={args.new} dtype={args.dtype}"
    )
    print(
        f"weights read per decode step: {weight_bytes / 2**20:.0f} MiB "
        f"(+ KV cache up to {cache_bytes / 2**20:.1f} MiB); "
        f"bandwidth bound {bound_s * 1e3:.1f} ms/step"
    )

    floor_s = matmul_floor(config, jax_params, args.batch, max(args.repeats, 3))
    print(
        f"matmul floor (the step's weight matmuls alone, one jit): "
        f"{floor_s * 1e3:.1f} ms/step, {floor_s / bound_s:.2f}x the bound"
    )

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
            f"{args.batch / step_s:.1f} tok/s, {step_s / bound_s:.2f}x the bound"
            + (
                f", {step_s / floor_s:.2f}x the matmul floor"
                if name == "rlvr_jax"
                else ""
            )
        )
    if "transformers" in results:
        ours, theirs = results["rlvr_jax"], results["transformers"]
        print(
            f"speed-up vs transformers: end-to-end {theirs[0] / ours[0]:.2f}x, "
            f"decode step {theirs[1] / ours[1]:.2f}x"
        )


if __name__ == "__main__":
    main()

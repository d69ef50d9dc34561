"""Decode-step time with the packed weights made outside vs inside the loop's jit.

`sampler.prepare` packs the weights in a jitted call of its own and passes
them to the sampling executable as arguments. This script measures the
alternative it replaced: packing inside the same executable as the decode
loop. Both variants run the same `decoding.step` loop (greedy, 8 rows, a
192-slot cache, Qwen2.5-0.5B shape, fp32) on the same weights; runs are
interleaved and the best of several rounds is kept, because memory bandwidth
on a shared host drifts. The pack itself is excluded: per-step time is
(time(long loop) - time(short loop)) / extra steps.

Measured on XLA:CPU when the sampler moved the pack out: the loop reading
packed arguments ran 1.1-1.5x faster than packing inside it.

    python benchmarks/pack_placement.py
    python benchmarks/pack_placement.py --layers 6 --rounds 4   # quicker
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from rlvr_jax import sampler
from rlvr_jax.model import decoder as model
from rlvr_jax.rollout import decoding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="24 = Qwen2.5-0.5B")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--slots", type=int, default=192, help="KV cache slots")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    config = model.ModelConfig.qwen2_5_0_5b(
        n_layers=args.layers, eos_token_ids=(), dtype="float32"
    )
    params = jax.jit(model.init_params, static_argnums=0)(config, jax.random.key(0))
    packed = sampler.prepare(config, params).decode
    r, s = args.rows, args.slots
    kv = (r, config.n_kv_heads)
    cache = decoding.Cache(
        tuple(jnp.zeros((*kv, config.head_dim, s)) for _ in range(config.n_layers)),
        tuple(jnp.zeros((*kv, s, config.head_dim)) for _ in range(config.n_layers)),
    )
    valid_rs = jnp.ones((r, s), bool)
    start = s // 2

    def loop(weights, cache, steps):
        def body(i, carry):
            tokens_r, cache = carry
            positions_r = jnp.full((r,), start + i, jnp.int32)
            logits_rv, cache = decoding.step(
                config, weights, cache, tokens_r, positions_r, start + i, valid_rs
            )
            return jnp.argmax(logits_rv, -1).astype(jnp.int32), cache

        init = (jnp.zeros((r,), jnp.int32), cache)
        return jax.lax.fori_loop(0, steps, body, init)[0]

    short, long = 2, 26
    runs = {}
    for steps in (short, long):
        runs["outside", steps] = (
            jax.jit(lambda w, c, n=steps: loop(w, c, n)),
            packed,
        )
        runs["inside", steps] = (
            jax.jit(lambda p, c, n=steps: loop(decoding.pack(config, p), c, n)),
            params,
        )
    for fn, weights in runs.values():
        jax.block_until_ready(fn(weights, cache))  # compile
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for name, (fn, weights) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(weights, cache))
            best[name] = min(best[name], time.perf_counter() - t0)
    per_step = {
        where: (best[where, long] - best[where, short]) / (long - short)
        for where in ("outside", "inside")
    }
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}; "
        f"layers={args.layers} rows={r} slots={s} rounds={args.rounds}"
    )
    for where, step_s in per_step.items():
        print(f"weights packed {where:>7} the loop's jit: {step_s * 1e3:.1f} ms/step")
    print(f"inside / outside: {per_step['inside'] / per_step['outside']:.2f}x")


if __name__ == "__main__":
    main()

"""Slot efficiency of chunked vs continuous batching on long-tailed lengths.

Slot efficiency = generated tokens / (slots × decode steps): the share of the
sampler's (row slot × decode step) cells that produce a token. A chunked
rollout decodes each chunk of rows until its longest row ends; continuous
batching (`rlvr_jax.rollout.scheduler`, the sampler's own scheduling, replayed here
with a stub step that ends row r at its predetermined length) refills a
slot with the next pending row as soon as its row ends.

Lengths: a lognormal with median 350 and p99 ≈ 1,600 tokens, capped at
3,072; and the real Qwen2.5-Math response lengths packaged with the planner
(rlvr_jax/data/lengths/, 8 per MATH problem, drawn as whole groups). Both
are drawn by `rlvr_jax.planning.lengths`, as the planner draws its mix. One
rollout is `--prompts` × 8 rows (the base config's 128 × 8).

The tail bounds continuous batching: once no row is pending, slots empty
while the last rows finish, so with S slots and R rows of mean length m the
efficiency is at most R·m / (R·m + S·tail). Fewer slots per rollout row (a
larger rollout, or fewer slots) raise it; each slot count is printed.

    python -m benchmarks.rollout                   # replay only (seconds)
    python -m benchmarks.rollout --model           # + tiny-model tokens/s

With `--model`, a random tiny Qwen2 samples the same prompts through the old
chunked path (`sampler.sample` per chunk) and through `sampler.continuous`,
in this one process, and the generated tokens/s of both are printed with
their ratio (CPU; the lengths come from the model, made long-tailed by a
sharpened head and a large EOS set).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from rlvr_jax.planning import lengths as lengths_lib
from rlvr_jax.rollout import scheduler


def lognormal_lengths(rows: int, seed: int = 0) -> np.ndarray:
    """Median 350, p99 ≈ 1,600, cap 3,072."""
    mix = lengths_lib.parse("lognormal:median=350,p99=1600")
    return lengths_lib.draw(mix, rows, 8, 3072, seed)[0]


def real_lengths(rows: int, seed: int = 0) -> np.ndarray:
    """`rows` lengths drawn as whole groups of 8 from the packaged file."""
    return lengths_lib.draw(
        lengths_lib.parse(lengths_lib.DEFAULT), rows, 8, 3072, seed
    )[0]


def chunked_steps(lengths: np.ndarray, chunk: int) -> int:
    """Decode steps of `chunk`-row chunks: each runs to its longest row (its
    first token comes from the prefill, as in the sampler)."""
    starts = range(0, len(lengths), chunk)
    return sum(int(lengths[i : i + chunk].max()) - 1 for i in starts)


def efficiency(lengths: np.ndarray, slots: int, steps: int) -> float:
    return float(lengths.sum()) / (slots * steps)


def replay_table(name: str, lengths: np.ndarray, chunk: int, slots, refills) -> None:
    print(
        f"{name}: {len(lengths)} rows, median {np.median(lengths):.0f}, "
        f"p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}"
    )
    steps = chunked_steps(lengths, chunk)
    print(
        f"  chunked    {chunk:4d} rows per chunk:         {steps:6d} steps, "
        f"slot efficiency {efficiency(lengths, chunk, steps):.3f}"
    )
    for count in slots:
        for every in refills:
            out = scheduler.replay(lengths, count, every)
            assert (np.asarray(out.tokens_r) == lengths).all()
            steps = int(out.decode_steps)
            print(
                f"  continuous {count:4d} slots, refill every {every:2d}: "
                f"{steps:6d} steps, slot efficiency "
                f"{efficiency(lengths, count, steps):.3f}"
            )


def model_throughput(args) -> None:
    """Tiny-model tokens/s, chunked `sample` vs `continuous`, same prompts."""
    from rlvr_jax import sampler
    from rlvr_jax.model import decoder as model

    config = model.ModelConfig.tiny(dtype="float32", param_dtype="float32")
    params = model.init_params(config, jax.random.key(0))
    # Sharpened head: each row's own tokens decide whether it stops soon.
    params = {**params, "embed": {"embedding": 8.0 * params["embed"]["embedding"]}}
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 512, 24).tolist() for _ in range(args.model_prompts)]
    tokens_bt, mask_bt = sampler.pad_prompts(prompts)
    settings = sampler.SamplingSettings(
        max_new_tokens=args.model_new,
        temperature=1.0,
        eos_ids=tuple(range(0, 512, 64)),
        n=8,
        cache_dtype="float32",
    )
    weights = sampler.prepare(config, params)
    key = jax.random.key(1)
    per_chunk = args.model_slots // settings.n

    def chunked():
        outs = [
            sampler.sample(
                config,
                weights,
                tokens_bt[c : c + per_chunk],
                mask_bt[c : c + per_chunk],
                key,
                row_offset=c * settings.n,
                settings=settings,
            )
            for c in range(0, len(prompts), per_chunk)
        ]
        outs = jax.device_get(outs)
        lengths = np.concatenate([o.lengths_r for o in outs])
        return lengths, sum(int(o.decode_steps) for o in outs)

    def continuous():
        out = jax.device_get(
            sampler.continuous(
                config,
                weights,
                tokens_bt,
                mask_bt,
                key,
                settings=settings,
                slots=args.model_slots,
            )
        )
        return out.lengths_r, int(out.decode_steps)

    results = {}
    for name, fn in (("chunked", chunked), ("continuous", continuous)):
        fn()  # compile
        t0 = time.perf_counter()
        lengths, steps = fn()
        seconds = time.perf_counter() - t0
        results[name] = (lengths, steps, seconds)
        print(
            f"  {name:10s}: {lengths.sum()} tokens, {steps} decode steps, "
            f"slot efficiency {efficiency(lengths, args.model_slots, steps):.3f}, "
            f"{lengths.sum() / seconds:8.0f} tok/s"
        )
    same = np.array_equal(results["chunked"][0], results["continuous"][0])
    ratio = results["chunked"][2] / results["continuous"][2]
    print(f"  same lengths: {same}; continuous / chunked tokens/s: {ratio:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--slots", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--refill", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--model", action="store_true")
    parser.add_argument("--model-prompts", type=int, default=64)
    parser.add_argument("--model-slots", type=int, default=64)
    parser.add_argument("--model-new", type=int, default=256)
    args = parser.parse_args()
    rows = args.prompts * 8
    tables = [
        ("lognormal", lognormal_lengths(rows)),
        ("Qwen2.5-Math on MATH", real_lengths(rows)),
    ]
    for name, lengths in tables:
        replay_table(name, lengths, args.chunk, args.slots, args.refill)
    if args.model:
        print(
            f"tiny model, {args.model_prompts} prompts x 8, "
            f"{args.model_slots} rows at once, up to {args.model_new} tokens:"
        )
        model_throughput(args)


if __name__ == "__main__":
    main()

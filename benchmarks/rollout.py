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

Slots vs pages (the last table). On v5e-8's figures (819 GB/s per chip,
Qwen2.5-Math-1.5B's bf16 weights read once per decode step per chip, its
KV bytes per token), one π1 rollout of `--prompts` × 8 rows at the real mix
through slot caches (`--chunk` slots over 8 chips, every slot attending up
to the longest live row) and through a paged cache with the same memory
per chip (`--page` tokens a page, each chip its own rows, book and pool,
the kernel reading each live row's own pages), both replayed through the
samplers' own scheduling (`scheduler.replay`, `pagebook.replay`). Printed
for each: decode steps, rows in flight, preemptions, and the sampling time
over its lower bound: decode steps ≥ the longest row, each step ≥ one
weight read, plus every live token's KV bytes read once per step.

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

from rlvr_jax.model import decoder
from rlvr_jax.planning import lengths as lengths_lib
from rlvr_jax.rollout import engine, pagebook, scheduler

V5E_BYTES_PER_S = 819e9  # HBM bandwidth per v5e chip
CHIPS = 8


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


def kv_bytes_per_token(config: decoder.ModelConfig) -> int:
    """Keys and values of one token, every layer, bf16."""
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * 2


def slots_vs_pages(
    lengths: np.ndarray,
    *,
    prompt_len: int,
    slots: int,
    page: int,
    new_tokens: int,
    chips: int = CHIPS,
    bytes_per_s: float = V5E_BYTES_PER_S,
    config: decoder.ModelConfig | None = None,
) -> dict:
    """Decode steps, rows in flight and roofline seconds of one rollout
    through `slots` slot caches and through a paged cache of the same bytes
    per chip, and their lower bound (see the module docstring).

    Rows are prompt-major; chip c holds rows [c R/chips, (c+1) R/chips) in
    the paged engine (its own prompts' rows), while the slot engine's global
    queue sends any row to any free slot.
    """
    config = config or decoder.ModelConfig.qwen2_5_math_1_5b()
    weights = decoder.count_params(decoder.abstract_params(config)) * 2
    per_token = kv_bytes_per_token(config)
    lengths = np.asarray(lengths, np.int64)
    block = engine.ATTENTION_BLOCK
    width = -(-(prompt_len + new_tokens) // block) * block

    # Slots: every step reads the weights and each chip's slots' caches up
    # to the longest live row, in whole blocks.
    out = scheduler.replay(lengths, slots, engine.REFILL_EVERY)
    per_longest = np.asarray(out.longest_l, np.int64)
    columns = engine.attended_columns(prompt_len, np.arange(per_longest.size), block)
    slot_steps = int(out.decode_steps)
    slot_kv = (per_longest * columns).sum() * (slots // chips) * per_token
    slot_seconds = (slot_steps * weights + slot_kv) / bytes_per_s
    slot_live = float(lengths.sum()) / max(slot_steps, 1)

    # Pages: the slot caches' bytes per chip as a pool, every row a slot.
    pages = (slots // chips) * (width // page)
    per_chip = lengths.reshape(chips, -1)
    paged_seconds, paged_steps, preemptions, live = 0.0, 0, 0, []
    for rows in per_chip:
        replay = pagebook.replay(
            rows,
            prompt_len,
            slots=len(rows),
            pages=pages,
            page=page,
            max_new_tokens=new_tokens,
            refill_every=engine.REFILL_EVERY,
        )
        steps = int(replay.decode_steps)
        kv = int(np.asarray(replay.kv_t, np.int64)[:steps].sum()) * per_token
        seconds = (steps * weights + kv) / bytes_per_s
        live.append(float(np.asarray(replay.live_t)[:steps].mean()))
        preemptions += int(replay.preemptions)
        # The rollout ends with its slowest chip; its steps, with its longest.
        paged_seconds = max(paged_seconds, seconds)
        paged_steps = max(paged_steps, steps)

    # Lower bound: the longest row's steps, a weight read each, and every
    # token's keys/values read once per step of its row's life (per chip).
    live_kv = (
        sum(int(np.sum(prompt_len + np.arange(1, n))) for n in lengths)
        * per_token
        / chips
    )
    bound = ((int(lengths.max()) - 1) * weights + live_kv) / bytes_per_s
    return {
        "bound_s": bound,
        "slots": {
            "steps": slot_steps,
            "in_flight": slot_live,
            "seconds": slot_seconds,
            "preemptions": 0,
        },
        "pages": {
            "steps": paged_steps,
            "in_flight": float(np.sum(live)),
            "seconds": paged_seconds,
            "preemptions": preemptions,
            "pages_per_chip": pages,
        },
    }


def pages_table(lengths: np.ndarray, args) -> None:
    out = slots_vs_pages(
        lengths,
        prompt_len=args.prompt_len,
        slots=args.chunk,
        page=args.page,
        new_tokens=3072,
    )
    bound = out["bound_s"]
    print(
        f"  slots vs pages, v5e-8 roofline, {len(lengths)} rows, prompt "
        f"{args.prompt_len} tokens (lower bound {bound:.1f} s):"
    )
    for name, r in (("slots", out["slots"]), ("pages", out["pages"])):
        extra = (
            f", {r['pages_per_chip']} pages of {args.page} per chip"
            if name == "pages"
            else f", {args.chunk} slots"
        )
        print(
            f"    {name:5s}: {r['steps']:5d} decode steps, {r['in_flight']:6.0f} rows "
            f"in flight, {r['preemptions']} preemptions{extra}: "
            f"{r['seconds']:5.1f} s = {r['seconds'] / bound:.2f}x the bound"
        )
    ratio = out["slots"]["seconds"] / out["pages"]["seconds"]
    print(f"    pages / slots speed-up: {ratio:.2f}x")


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
    parser.add_argument("--page", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=256)
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
    pages_table(tables[1][1], args)
    if args.model:
        print(
            f"tiny model, {args.model_prompts} prompts x 8, "
            f"{args.model_slots} rows at once, up to {args.model_new} tokens:"
        )
        model_throughput(args)


if __name__ == "__main__":
    main()

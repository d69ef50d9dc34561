"""The paged KV cache: paged sampler == slot sampler (greedy and T=1, with
and without preemption, on one device and over a mesh), the page book's
invariants, the prompt pages, and the Pallas TPU kernel (interpret mode)
against the pure-JAX attention.

fp32 compute and cache unless a test says otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from rlvr_jax import sharding as SH
from rlvr_jax.model import paged
from rlvr_jax.model import params as PR
from rlvr_jax.rollout import engine, pagebook, paged_engine, sampling

EOS = (5, 17, 42, 99, 150, 201)  # several, so that rows end at many lengths


@pytest.fixture(scope="module")
def model(hf_tiny_dir):
    return PR.load_hf(hf_tiny_dir, np.float32, compute_dtype="float32")


def _prompts(vocab):
    rng = np.random.default_rng(0)
    return [rng.integers(1, vocab, n).tolist() for n in (3, 7, 12, 5)]


def _settings(temperature, new=24, n=3, cache="float32"):
    return sampling.SamplingSettings(
        max_new_tokens=new,
        temperature=temperature,
        eos_ids=EOS,
        n=n,
        cache_dtype=cache,
    )


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_paged_sampler_equals_slot_sampler_with_and_without_preemption(
    model, temperature
):
    """Same tokens, lengths and truncation; log-probs within 1e-5. A pool of
    6 pages of 8 holds one widest row (4 pages) and a bit: rows are
    preempted and restarted, and still draw what the slot sampler drew. The
    roomy pool's prompts are prefilled two at a time."""
    config, params = model
    prompts = _prompts(config.vocab_size)
    settings = _settings(temperature)
    key = jax.random.key(1)
    ref = engine.rollout(config, params, prompts, settings, key, slots=12)
    assert ref.lengths.min() < ref.lengths.max()  # rows of several lengths
    for pages, slots in [(60, 12), (6, 12)]:
        out = engine.rollout(
            config,
            params,
            prompts,
            settings,
            key,
            slots=slots,
            paging=paged_engine.Paging(
                page=8, pages=pages, prefill_chunk=2 if pages == 60 else 0
            ),
        )
        np.testing.assert_array_equal(out.tokens, ref.tokens)
        np.testing.assert_array_equal(out.lengths, ref.lengths)
        np.testing.assert_array_equal(out.truncated, ref.truncated)
        np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5, rtol=0)
        if pages == 60:  # room for every row's pages: never preempts
            assert out.preemptions == 0
            assert out.decode_steps == ref.decode_steps
        else:
            assert out.preemptions > 0


def test_paged_sampler_over_a_mesh_equals_one_device(model):
    """Two devices, each with its own prompts' rows, book and pool (a
    `shard_map`), its prompts prefilled one at a time, draw what one device
    draws, preempting on the way."""
    config, params = model
    prompts = _prompts(config.vocab_size)
    settings = _settings(1.0)
    key = jax.random.key(2)
    ref = engine.rollout(config, params, prompts, settings, key, slots=12)
    mesh = SH.make_mesh(data=2, fsdp=1, devices=jax.devices()[:2])
    out = engine.rollout(
        config,
        params,
        prompts,
        settings,
        key,
        slots=12,
        mesh=mesh,
        paging=paged_engine.Paging(page=8, pages=5, prefill_chunk=1),
    )
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5, rtol=0)
    assert out.preemptions > 0


def test_paging_arguments_are_checked(model):
    config, params = model
    with pytest.raises(ValueError, match="page"):
        paged_engine.Paging(page=0, pages=4)
    with pytest.raises(ValueError, match="attention"):
        paged_engine.Paging(page=8, pages=4, attention="flash")
    tokens, mask = sampling.pad_prompts(_prompts(config.vocab_size))
    with pytest.raises(ValueError, match="cannot hold one widest row"):
        paged_engine.continuous_paged(
            config,
            params,
            tokens,
            mask,
            jax.random.key(0),
            settings=_settings(0.0),
            slots=4,
            paging=paged_engine.Paging(page=8, pages=3),
        )


def test_prompt_pages_hold_each_prompts_tokens_compact():
    """Prompt b's c-th real token (left padding dropped) at page
    b * per_prompt + c // C, column c % C."""
    b, t, k, h, c = 2, 6, 1, 2, 4
    kv_bskh = jnp.arange(b * t * k * h, dtype=jnp.float32).reshape(b, t, k, h)
    prompt_len_b = jnp.array([3, 6])
    pages_kpch = paged.pages_from_prefill(kv_bskh, prompt_len_b, 2, c)
    assert pages_kpch.shape == (k, 4, c, h)
    for i, length in enumerate([3, 6]):
        real = np.asarray(kv_bskh[i, t - length :, 0])
        got = np.asarray(pages_kpch[0, 2 * i : 2 * i + 2]).reshape(-1, h)[:length]
        np.testing.assert_array_equal(got, real)


# ----------------------------------------------------------------- the book
def test_book_replay_frees_every_page_and_counts_every_token():
    """A length mix through the book with a pool that forces preemption:
    each row produces its length (plus recomputed tokens when preempted),
    the pool never holds more than its pages, and the oldest row is never
    the one preempted (every row ends)."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 60, 40)
    page, new, pool = 8, 64, 24
    out = pagebook.replay(
        lengths,
        prompt_len=13,
        slots=16,
        pages=pool,
        page=page,
        max_new_tokens=new,
        refill_every=4,
    )
    assert int(out.preemptions) > 0
    assert np.all(np.asarray(out.tokens_r) >= lengths)
    steps = int(out.decode_steps)
    held = np.asarray(out.held_t)[:steps]
    assert held.max() <= pool
    live = np.asarray(out.live_t)[:steps]
    assert live.max() <= 16 and live.min() >= 1
    # Without preemption (a pool for every slot's widest row) the tokens are
    # exactly the lengths and the pages held never exceed the live rows'.
    roomy = pagebook.replay(
        lengths,
        prompt_len=13,
        slots=16,
        pages=16 * pagebook.own_pages(page, new),
        page=page,
        max_new_tokens=new,
        refill_every=4,
    )
    assert int(roomy.preemptions) == 0
    np.testing.assert_array_equal(np.asarray(roomy.tokens_r), lengths)


def test_book_allocates_a_page_when_a_row_crosses_into_one():
    """A row with prompt 13 and page 8 writes columns 13, 14, ...: its first
    own page covers 8..15 (a copy of the prompt's partial page), the second
    starts at column 16, i.e. at its 4th token."""
    book = pagebook.empty(slots=1, rows=1, pages=4, own=3)
    book, new_s = pagebook.admit(
        book, 1, lambda row_s: jnp.full(row_s.shape, 13, jnp.int32), 8
    )
    assert bool(new_s[0])
    grants = []
    for tokens in range(1, 6):  # the row has `tokens` tokens before a step
        book = book._replace(slots=book.slots._replace(step_s=jnp.array([tokens])))
        book, granted_s, page_s = pagebook.allocate(book, 8)
        grants.append(bool(granted_s[0]))
    assert grants == [True, False, False, True, False]
    assert int(book.owned_s[0]) == 2
    assert int(jnp.sum(~book.free_p)) == 2
    book = pagebook.release(book, jnp.array([True]))
    assert bool(jnp.all(book.free_p))


def test_a_pool_smaller_than_one_row_is_refused():
    with pytest.raises(ValueError, match="cannot hold one widest row"):
        pagebook.empty(slots=2, rows=4, pages=2, own=3)


# ---------------------------------------------------------------- the kernel
def test_pallas_paged_kernel_in_interpret_mode_equals_pure_jax():
    """`attend_pallas` (the TPU kernel, interpreted) == `attend` on a pool
    in bf16 (the kernel computes with bf16 keys/values), rows of many
    lengths over scattered pages, several blocks."""
    r, k, g, h, p, c, q = 5, 2, 2, 32, 20, 8, 4
    keys = jax.random.split(jax.random.key(0), 3)
    q_rkgh = jax.random.normal(keys[0], (r, k, g, h), jnp.float32)
    pool_k = jax.random.normal(keys[1], (k, p, c, h)).astype(jnp.bfloat16)
    pool_v = jax.random.normal(keys[2], (k, p, c, h)).astype(jnp.bfloat16)
    table_rq = jnp.asarray(
        np.random.default_rng(1).permutation(p)[: r * q].reshape(r, q), jnp.int32
    )
    kv_len_r = jnp.array([1, 8, 9, 23, 32], jnp.int32)
    args = (q_rkgh, pool_k, pool_v, table_rq, kv_len_r)
    want = paged.attend(*args, dtype=jnp.float32, pages_per_block=2)
    with pltpu.force_tpu_interpret_mode():
        got = paged.attend_pallas(*args, dtype=jnp.float32, pages_per_block=2)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    # and the pure-JAX path is plain masked softmax attention
    k_rxkh = jnp.swapaxes(pool_k[:, table_rq], 0, 1).reshape(r, k, q * c, h)
    v_rxkh = jnp.swapaxes(pool_v[:, table_rq], 0, 1).reshape(r, k, q * c, h)
    scores = jnp.einsum("rkgh,rkxh->rkgx", q_rkgh, k_rxkh.astype(jnp.float32))
    scores = scores / np.sqrt(h)
    seen = jnp.arange(q * c)[None] < kv_len_r[:, None]
    probs = jax.nn.softmax(jnp.where(seen[:, None, None], scores, -jnp.inf), -1)
    plain = jnp.einsum("rkgx,rkxh->rkgh", probs, v_rxkh.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(want), np.asarray(plain), atol=1e-5)


@pytest.mark.slow
def test_paged_sampler_through_the_pallas_kernel_equals_pure_jax(model):
    """The whole sampler with the TPU kernel (interpret mode, about 2 min):
    tokens identical to the pure-JAX paged path, bf16 cache."""
    config, params = model
    prompts = _prompts(config.vocab_size)
    settings = _settings(0.0, n=2, cache="bfloat16")
    key = jax.random.key(1)

    def run(attention):
        return engine.rollout(
            config,
            params,
            prompts,
            settings,
            key,
            slots=8,
            paging=paged_engine.Paging(8, 12, attention),
        )

    ref = run("xla")
    with pltpu.force_tpu_interpret_mode():
        out = run("pallas")
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-4, rtol=0)


def test_rollout_benchmark_slots_vs_pages_respects_its_lower_bound():
    """`benchmarks.rollout.slots_vs_pages` on a long-tailed mix: both
    engines take at least the longest row's decode steps and the bound's
    time; pages (the slot caches' bytes as a pool) hold more rows in flight
    and take fewer steps than slots."""
    from benchmarks import rollout as bench

    rng = np.random.default_rng(0)
    lengths = np.minimum(np.round(rng.lognormal(5.0, 0.8, 256)), 1000).astype(int)
    lengths = np.maximum(lengths, 1)
    out = bench.slots_vs_pages(
        lengths, prompt_len=64, slots=64, page=32, new_tokens=1024
    )
    slots, pages = out["slots"], out["pages"]
    for r in (slots, pages):
        assert r["steps"] >= lengths.max() - 1
        assert r["seconds"] >= out["bound_s"] * 0.999
    assert pages["steps"] < slots["steps"]
    assert pages["in_flight"] > slots["in_flight"]
    assert pages["seconds"] < slots["seconds"]

"""Packed learner batches: the plan, packed vs unpacked loss/metrics/gradients,
the response-only head, segment isolation, and blockwise attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import grpo
from rlvr_jax.learner import packing
from rlvr_jax.model import decoder as M
from tests.learner_fixtures import CONFIG, VOCAB, fast_jit, params, rel_err

# Very different lengths: several sequences share each packed row.
PROMPT_LENS = [3, 1, 5, 2, 4, 2]
RESP_LENS = [20, 1, 7, 3, 12, 2]
P, N = max(PROMPT_LENS), max(RESP_LENS)
TAU = 0.6


def _sequences(seed=0):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1, VOCAB, n).astype(np.int32) for n in PROMPT_LENS]
    responses = [rng.integers(1, VOCAB, n).astype(np.int32) for n in RESP_LENS]
    adv = rng.normal(size=len(prompts)).astype(np.float32)
    return prompts, responses, adv


def _unpacked(prompts, responses, adv):
    """One sequence per row: left-padded prompt (width P), then the response."""
    b = len(prompts)
    tokens = np.zeros((b, P + N), np.int32)
    mask = np.zeros((b, P + N), bool)
    loss_mask = np.zeros((b, P + N), bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        tokens[i, P - len(p) : P + len(r)] = np.concatenate([p, r])
        mask[i, P - len(p) : P + len(r)] = True
        loss_mask[i, P : P + len(r)] = True
    return dict(tokens=tokens, mask=mask, loss_mask=loss_mask, advantages=adv)


def _put_unpacked(values, like):
    out = np.zeros(like.shape, np.float32)
    for i, v in enumerate(values):
        out[i, P : P + len(v)] = v
    return out


def _put_packed(values, batch):
    """Per-sequence response values into a packed batch's columns."""
    out = np.zeros(batch["tokens"].shape, np.float32)
    for i, v in enumerate(values):
        out[(batch["segment_ids"] == i + 1) & batch["loss_mask"]] = v
    return out


def _batches(agg, max_tokens=None):
    """The same six sequences unpacked and packed, with old/ref log-probs."""
    prompts, responses, adv = _sequences()
    unpacked = _unpacked(prompts, responses, adv)
    logp = np.asarray(_logprobs(CONFIG, params(), unpacked, temperature=TAU))
    rng = np.random.default_rng(1)
    # Near the current log-probs, so some ratios clip and the KL is non-zero.
    old = [
        logp[i, P : P + n] + rng.choice([-0.4, 0.4], n) for i, n in enumerate(RESP_LENS)
    ]
    ref = [logp[i, P : P + n] + rng.normal(0, 0.3, n) for i, n in enumerate(RESP_LENS)]
    unpacked.update(
        old_logp=_put_unpacked(old, logp), ref_logp=_put_unpacked(ref, logp)
    )
    packed = packing.pack(
        prompts,
        responses,
        adv,
        agg=agg,
        limit=64,
        max_tokens=max_tokens,
        response_logprobs=old,
    )
    packed["ref_logp"] = _put_packed(ref, packed)
    return unpacked, packed


_logprobs = fast_jit(grpo.logprobs, static_argnums=0, static_argnames="temperature")
_grads = fast_jit(
    grpo.loss_and_grads, static_argnames=("model_config", "learner_config", "mesh")
)


# ---------------------------------------------------------------- the plan
def test_plan_packs_first_fit_decreasing_without_overlap():
    lengths = np.array([23, 2, 12, 5, 16, 4])
    layout = packing.plan(lengths, width=32, rows_multiple=2)
    assert layout.rows == 2  # 62 tokens in two rows of 32
    used = np.zeros((layout.rows, 32), int)
    for r, o, n in zip(layout.row, layout.offset, lengths):
        used[r, o : o + n] += 1
    assert used.max() == 1 and used.sum() == lengths.sum()
    # Longest first, each into the first row with room.
    assert list(layout.row) == [0, 1, 1, 0, 1, 0]
    assert list(layout.offset) == [0, 28, 16, 23, 0, 28]
    assert packing.plan(lengths, 32, rows_multiple=3).rows == 3
    # Whole micro-batches when one is not enough, else one smaller one.
    assert packing.plan(lengths, 32, micro_rows=1).rows == 2
    assert packing.plan(lengths, 32, rows_multiple=2, micro_rows=8).rows == 2
    assert packing.plan(np.full(5, 30), 32, micro_rows=2).rows == 6


def test_buckets_width_and_micro_batch_rows():
    assert [packing.bucket(n) for n in (1, 7, 8, 9, 15, 16, 17, 33, 100)] == [
        1, 7, 8, 9, 15, 16, 18, 36, 104,
    ]  # fmt: skip
    assert all(packing.bucket(n) <= n * 1.125 for n in range(8, 5000))
    assert packing.width_for(23, 64) == 32 and packing.width_for(40, 48) == 48
    assert packing.rows_per_micro_batch(32, 100) == 3
    assert packing.rows_per_micro_batch(32, 100, divisor=2) == 6
    assert packing.rows_per_micro_batch(64, 10, divisor=4) == 4  # ≥ 1 per device


def test_packed_batch_layout_and_weights():
    prompts, responses, adv = _sequences()
    b = packing.pack(prompts, responses, adv, agg="seq-mean-token-mean", limit=64)
    assert b["tokens"].shape == (2, 32)
    assert packing.token_efficiency(b) == sum(PROMPT_LENS + RESP_LENS) / 64
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seg = b["segment_ids"] == i + 1
        np.testing.assert_array_equal(b["tokens"][seg], np.concatenate([p, r]))
        np.testing.assert_array_equal(b["positions"][seg], np.arange(len(p) + len(r)))
        np.testing.assert_array_equal(b["tokens"][seg & b["loss_mask"]], r)
        np.testing.assert_allclose(
            b["loss_weight"][seg & b["loss_mask"]], 1 / (6 * len(r))
        )
    np.testing.assert_allclose(b["loss_weight"].sum(), 1.0, rtol=1e-6)
    # The head runs exactly at the columns before each response token.
    for row in range(2):
        cols = b["head_cols"][row][b["head_cols"][row] < 32]
        np.testing.assert_array_equal(np.flatnonzero(b["loss_mask"][row]), cols + 1)


# -------------------------------------------- packed == unpacked learner
@pytest.fixture(scope="module")
def learner_results():
    """Every aggregation mode, unpacked vs packed in micro-batches by token
    budget (and packed in one micro-batch)."""
    cases = {}
    for agg in grpo.AGG_MODES:
        cfg = grpo.LearnerConfig(agg=agg, logits_chunk=8, recompute_old_logp=False)
        unpacked, packed = _batches(agg)
        _, micro = _batches(agg, max_tokens=32)  # one 32-token row at a time
        assert micro["tokens"].shape[0] == 2
        cases[agg] = [
            (unpacked, cfg),
            (micro, cfg.replace(max_tokens_per_micro_batch=32)),
        ]
        if agg == "token-mean":  # one compile more: packed, one micro-batch
            cases[agg].append((packed, cfg))

    @fast_jit
    def run(params, batches):
        return {
            agg: [
                grpo.loss_and_grads(params, b, model_config=CONFIG, learner_config=c)
                for b, c in zip(batches[agg], configs[agg])
            ]
            for agg in batches
        }

    configs = {agg: [c for _, c in v] for agg, v in cases.items()}
    batches = {agg: [b for b, _ in v] for agg, v in cases.items()}
    return jax.device_get(run(params(), batches))


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_packed_learner_equals_unpacked(learner_results, agg):
    (g_ref, m_ref), *packed = learner_results[agg]
    assert m_ref["clip_frac"] > 0 and m_ref["kl"] > 0
    assert set(m_ref) == {
        "loss", "pg_loss", "kl", "entropy", "clip_frac", "ppo_kl", "num_tokens",
        "num_seqs",
    }  # fmt: skip
    for g, m in packed:
        assert set(m) == set(m_ref)
        for key in m_ref:
            np.testing.assert_allclose(m[key], m_ref[key], rtol=1e-6, atol=1e-6)
        assert rel_err(g, g_ref) <= 1e-6


# ------------------------------------------------- response-only head
def test_response_only_head_equals_full_head():
    _, packed = _batches("token-mean")
    assert packed["head_cols"].shape[1] < packed["tokens"].shape[1]

    @fast_jit
    def run(params):
        args = (CONFIG, params, packed["tokens"], packed["mask"], packed["positions"])
        kw = dict(temperature=TAU, logits_chunk=8, segment_ids_bt=packed["segment_ids"])
        full = grpo.logprobs_and_entropy(*args, **kw)
        only = grpo.logprobs_and_entropy(*args, **kw, head_cols_bk=packed["head_cols"])
        return full, only

    (lp_full, ent_full), (lp, ent) = jax.device_get(run(params()))
    m = packed["loss_mask"]
    assert np.all(ent[m] > 0)
    np.testing.assert_allclose(lp[m], lp_full[m], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ent[m], ent_full[m], rtol=1e-6, atol=1e-6)
    assert np.all(lp[~m] == 0) and np.all(ent[~m] == 0)


# ------------------------------------------------------ segment isolation
@pytest.mark.parametrize("block", [1024, 8])  # plain and blockwise attention
def test_segment_ids_isolate_packed_neighbours(block):
    config = CONFIG.replace(attention_block=block)
    prompts, responses, adv = _sequences()
    a = packing.pack(prompts, responses, adv, agg="token-mean", limit=64)
    # Same lengths, other tokens for sequence 4 (sharing a row with 0 and 1).
    responses[4] = (responses[4] + 7) % (VOCAB - 1) + 1
    b = packing.pack(prompts, responses, adv, agg="token-mean", limit=64)
    changed = (a["tokens"] != b["tokens"]).any(axis=0)
    assert changed.any() and a["segment_ids"][1][changed].tolist().count(5) > 0

    @fast_jit
    def run(params):
        return [grpo.logprobs(config, params, x, temperature=TAU) for x in (a, b)]

    lp_a, lp_b = jax.device_get(run(params()))
    others = (a["segment_ids"] != 5) & a["loss_mask"]
    assert (a["segment_ids"][1] != 5).any()  # neighbours in the changed row
    np.testing.assert_array_equal(lp_a[others], lp_b[others])
    assert not np.array_equal(lp_a[a["segment_ids"] == 5], lp_b[a["segment_ids"] == 5])


# --------------------------------------------------- blockwise attention
def test_blockwise_attention_equals_plain_values_and_gradients():
    prompts, responses, adv = _sequences()
    x = packing.pack(prompts, responses, adv, agg="token-mean", limit=64)
    w = jnp.asarray(np.random.default_rng(3).normal(size=(2, 32, CONFIG.d_model)))

    def objective(params, block):
        h, _ = M.hidden(
            CONFIG.replace(attention_block=block),
            params,
            x["tokens"],
            x["positions"],
            segment_ids_bt=x["segment_ids"],
        )
        return jnp.sum(w * h), h

    @fast_jit
    def run(params):
        # 32 columns: plain, and 3 blocks of 12 (T padded to 36).
        return [jax.grad(objective, has_aux=True)(params, b) for b in (32, 12)]

    (g_plain, h_plain), *blocked = jax.device_get(run(params()))
    for g, h in blocked:
        np.testing.assert_allclose(h, h_plain, rtol=1e-6, atol=1e-6)
        assert rel_err(g, g_plain) <= 1e-6


def test_blockwise_attention_shrinks_compiled_temporaries():
    t, k, g, h = 1024, 1, 4, 16
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, t, k, g, h)), jnp.float32)
    kv = jnp.asarray(rng.normal(size=(1, t, k, h)), jnp.float32)
    seg = jnp.ones((1, t), jnp.int32)

    def temp_bytes(attend):
        def loss(q, kv):
            return jnp.sum(attend(q, kv, kv, seg, seg, jnp.arange(t), jnp.float32))

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(q, kv).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain = temp_bytes(M.dot_attention)
    blocked = temp_bytes(lambda *a: M.blockwise_attention(*a, block=128))
    # Plain holds [G, T, T] fp32 scores (16 MiB here) and more for the backward.
    assert plain >= g * t * t * 4
    assert blocked * 4 < plain, (blocked, plain)

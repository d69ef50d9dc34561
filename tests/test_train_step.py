"""The learner end to end on tiny models: log-prob alignment, gradients,
micro-batching, sharded vs single-device steps, skipped updates, learning, and
lowering the real 1.5B step on an 8-device mesh (no execution)."""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rlvr_jax import grpo
from rlvr_jax import sharding as S
from rlvr_jax.learner import optimizer
from rlvr_jax.model import decoder as M
from tests.learner_fixtures import (
    CONFIG,
    VOCAB,
    fast_jit,
    flat,
    make_batch,
    params,
    random_params,
    rel_err,
    with_old_and_ref,
)

grads_fn = fast_jit(
    grpo.loss_and_grads, static_argnames=("model_config", "learner_config", "mesh")
)


# ------------------------------------------------------ log-prob alignment
def test_chunked_logprobs_match_full_forward_shifted_and_same_gradient():
    batch = make_batch(0, prompt_lens=[5, 2, 3], resp_lens=[7, 4, 1])
    tau = 0.6
    w_bt = jnp.asarray(np.random.default_rng(2).normal(size=batch["tokens"].shape))

    def scores(params, chunk):
        return grpo.logprobs_and_entropy(
            CONFIG,
            params,
            batch["tokens"],
            batch["mask"],
            temperature=tau,
            logits_chunk=chunk,
        )

    def objective(params, chunk):
        logp, ent = scores(params, chunk)
        return jnp.sum(w_bt * logp) + jnp.sum(ent)

    @fast_jit
    def run(params):
        logits = M.forward(CONFIG, params, batch["tokens"], mask=batch["mask"])
        full = jax.nn.log_softmax(logits / tau, axis=-1)
        chunks = (4, 5, 512)  # divides T = 12, does not, larger than T
        grads = [jax.grad(objective)(params, c) for c in (5, 512)]
        return full, [scores(params, c) for c in chunks], grads

    full, outs, (g_chunked, g_whole) = run(params())
    full = np.asarray(full)
    tokens = batch["tokens"]
    b, t = tokens.shape
    # Token t is scored by the distribution predicted at t − 1; t = 0 by none.
    want = np.zeros((b, t), np.float32)
    want_ent = np.zeros((b, t), np.float32)
    for i in range(b):
        for j in range(1, t):
            want[i, j] = full[i, j - 1, tokens[i, j]]
            want_ent[i, j] = -(np.exp(full[i, j - 1]) * full[i, j - 1]).sum()
    for logp, ent in outs:
        np.testing.assert_allclose(np.asarray(logp), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(flat(g_whole)) > 1.0
    assert rel_err(g_chunked, g_whole) <= 1e-6


def test_untied_head_logprobs_match_full_forward():
    config = CONFIG.replace(tie_embeddings=False)
    batch = make_batch(9, prompt_lens=[5, 2], resp_lens=[7, 4])

    @fast_jit
    def run(params):
        logits = M.forward(config, params, batch["tokens"], mask=batch["mask"])
        full = jax.nn.log_softmax(logits / 0.6, axis=-1)
        logp = grpo.logprobs(config, params, batch, temperature=0.6, logits_chunk=5)
        return full, logp

    full, logp = map(np.asarray, run(random_params(config)))
    want = np.take_along_axis(full[:, :-1], batch["tokens"][:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(logp[:, 1:], want, rtol=1e-5, atol=1e-6)
    assert np.all(logp[:, 0] == 0)


# ----------------------------------------------------------- gradients
def test_on_policy_gradient_equals_reinforce_with_baseline():
    batch = make_batch(3, prompt_lens=[5, 3, 4, 1], resp_lens=[7, 2, 5, 3])
    pg_only = grpo.LearnerConfig(kl_coef=0.0, entropy_coef=0.0, remat=False)

    def reinforce(params):
        logp, _ = grpo.logprobs_and_entropy(
            CONFIG, params, batch["tokens"], batch["mask"], temperature=0.6
        )
        m = batch["loss_mask"]
        adv = batch["advantages"][:, None]
        return -jnp.sum(jnp.where(m, adv * logp, 0)) / m.sum()

    @fast_jit
    def run(params):
        old_logp = grpo.logprobs(CONFIG, params, batch, temperature=0.6)
        recomputed = grpo.loss_and_grads(
            params, batch, model_config=CONFIG, learner_config=pg_only
        )
        given = grpo.loss_and_grads(
            params,
            dict(batch, old_logp=old_logp),
            model_config=CONFIG,
            learner_config=pg_only.replace(recompute_old_logp=False),
        )
        return recomputed, given, jax.grad(reinforce)(params)

    (g_rec, m_rec), (g_given, m_given), g_ref = run(params())
    assert float(m_rec["clip_frac"]) == 0.0 and float(m_rec["ppo_kl"]) == 0.0
    assert float(m_given["clip_frac"]) == 0.0
    assert abs(float(m_given["ppo_kl"])) < 1e-6
    assert rel_err(g_rec, g_ref) <= 1e-6
    assert rel_err(g_given, g_ref) <= 1e-6


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_gradient_accumulation_is_exact_for_every_aggregation(agg):
    # Micro-batch i takes rows i::n. Unequal response lengths, and one empty
    # row (5th), so 2 micro-batches hold 1+2+0+4 = 7 and 7+6+5+7 = 25 tokens
    # and 3 and 4 sequences.
    batch = make_batch(4, [5, 1, 3, 4, 2, 5, 1, 3], [1, 7, 2, 6, 0, 5, 4, 7])
    batch = with_old_and_ref(batch, params())
    cfg = grpo.LearnerConfig(
        agg=agg,
        recompute_old_logp=False,
        kl_coef=0.1,
        entropy_coef=0.05,
        logits_chunk=4,
    )
    run = lambda b, mb: grads_fn(
        params(),
        b,
        model_config=CONFIG,
        learner_config=cfg.replace(micro_batch_size=mb),
    )
    full, m_full = run(batch, None)
    assert float(m_full["clip_frac"]) > 0  # the clipped branch is exercised
    # A metric sums 32 per-token terms of order 1 (unit-std advantages, ratios
    # near 1) that largely cancel; summed in another order, fp32 can move the
    # total by up to tokens × eps in absolute terms whatever its size (seen:
    # 8.6e-7 on an AVX-512 host, 1e-7 on AVX2). The naive scheme below is off
    # by ~1e-2.
    atol = int(batch["loss_mask"].sum()) * float(np.finfo(np.float32).eps)
    for mb in (4, 2):  # 2 and 4 micro-batches
        grads, metrics = run(batch, mb)
        assert rel_err(grads, full) <= 1e-6
        for key in ("loss", "pg_loss", "kl", "entropy", "clip_frac", "ppo_kl"):
            np.testing.assert_allclose(
                float(metrics[key]), float(m_full[key]), rtol=1e-6, atol=atol
            )
    # The test can fail: normalising each micro-batch by its own counts and
    # averaging (the naive scheme) gives another gradient. Half i alone is the
    # batch with the other rows' loss mask cleared (same shapes: no compile).
    halves = []
    for i in (0, 1):
        half_mask = batch["loss_mask"].copy()
        half_mask[1 - i :: 2] = False
        halves.append(run(dict(batch, loss_mask=half_mask), None)[0])
    naive = jax.tree.map(lambda a, b: (a + b) / 2, *halves)
    assert rel_err(naive, full) > 1e-2


# ------------------------------------------------------------- train step
# One optimizer and learner setting for every train-step test, so each mesh
# compiles its step once.
TX = optimizer.adamw(1e-3)  # weight decay 0.01, clip 1.0
STEP_CFG = grpo.LearnerConfig(
    micro_batch_size=8, logits_chunk=4, recompute_old_logp=False
)
LENS = [5, 1, 3, 4, 2, 5, 1, 3, 4, 4, 2, 5, 3, 1, 2, 5]  # 16 rows


@functools.cache
def learner(n_devices):
    """(mesh, jitted train step, jitted log-probs) on 1 or 8 devices."""
    if n_devices == 8:
        mesh = S.make_mesh(data=2, fsdp=4)
    else:
        mesh = S.make_mesh(devices=jax.devices()[:1])
    step = grpo.jit_train_step(CONFIG, STEP_CFG, TX, mesh)
    return mesh, step, grpo.jit_logprobs(CONFIG, STEP_CFG, mesh)


def _run_steps(n_devices, batches):
    mesh, step, logprobs = learner(n_devices)
    ref_params = jax.device_put(params(), S.tree_shardings(params(), mesh))
    state = grpo.init_train_state(CONFIG, TX, mesh, params=ref_params)
    history = []
    for batch in batches:
        batch = S.shard_batch(mesh, batch)
        batch["ref_logp"] = logprobs(ref_params, batch)
        state, metrics = step(state, batch)
        history.append(jax.tree.map(float, metrics))
    return state, history, ref_params


def test_sharded_step_matches_single_device():
    batches = [
        with_old_and_ref(make_batch(s, LENS, LENS[::-1]), params(), seed=s)
        for s in (10, 11)
    ]
    state8, hist8, ref8 = _run_steps(8, batches)
    state1, hist1, _ = _run_steps(1, batches)
    # Params really are split over 'fsdp' on the 8-device mesh.
    q = state8.params["layers"]["attn"]["q_kernel"]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert len(q.addressable_shards) == 8
    assert q.addressable_shards[0].data.shape == (2, 8, 2, 16)
    moved = flat(state1.params) - flat(params())
    assert np.abs(moved).max() > 1e-3  # two updates of lr 1e-3 did move
    np.testing.assert_allclose(flat(state8.params), flat(state1.params), atol=1e-5)
    for key in ("loss", "grad_norm", "kl", "entropy", "clip_frac"):
        np.testing.assert_allclose(
            [h[key] for h in hist8], [h[key] for h in hist1], rtol=1e-5
        )
    assert hist1[0]["clip_frac"] > 0
    assert int(state8.step) == 2 and int(state8.skipped) == 0
    # The donated state never took the reference params with it.
    np.testing.assert_array_equal(flat(ref8), flat(params()))
    assert learner(8)[1]._cache_size() == 1  # no retrace between steps


def test_non_finite_batch_skips_update_and_counts_it():
    mesh, step, _ = learner(1)
    good = with_old_and_ref(make_batch(20, LENS, LENS), params())
    bad = dict(good, advantages=good["advantages"].copy())
    bad["advantages"][3] = np.nan
    # Garbage at a position outside the loss mask must not cause a skip.
    harmless = dict(good, old_logp=good["old_logp"].copy())
    harmless["old_logp"][0, 0] = np.inf
    state = grpo.init_train_state(CONFIG, TX, mesh, params=params())

    before = jax.tree.map(np.asarray, state)
    state, metrics = step(state, S.shard_batch(mesh, bad))
    assert int(metrics["skipped"]) == 1 and int(state.skipped) == 1
    assert not math.isfinite(float(metrics["loss"]))
    after = jax.tree.map(np.asarray, state)
    np.testing.assert_array_equal(flat(after.params), flat(before.params))
    np.testing.assert_array_equal(flat(after.opt_state), flat(before.opt_state))
    assert int(state.step) == 1

    state, metrics = step(state, S.shard_batch(mesh, harmless))
    assert int(metrics["skipped"]) == 0 and int(state.skipped) == 1
    assert np.abs(flat(state.params) - flat(before.params)).max() > 1e-4


def test_grad_norm_is_reported_before_clipping():
    mesh, step, _ = learner(1)
    batch = with_old_and_ref(make_batch(30, LENS, LENS), params())
    batch["advantages"] *= 10  # a gradient norm well above the clip (1.0)
    grads, _ = grads_fn(params(), batch, model_config=CONFIG, learner_config=STEP_CFG)
    state = grpo.init_train_state(CONFIG, TX, mesh, params=params())
    _, metrics = step(state, S.shard_batch(mesh, batch))
    norm = np.linalg.norm(flat(grads))
    assert norm > 2.0
    np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-5)


def test_positive_advantage_raises_that_continuation_monotonically():
    mesh, step, logprobs = learner(1)
    rng = np.random.default_rng(5)
    prompt = rng.integers(1, VOCAB, 5)
    good, bad = rng.integers(1, VOCAB, 7), rng.integers(1, VOCAB, 7)
    rows = [np.concatenate([prompt, c]) for c in [good] * 8 + [bad] * 8]
    tokens = np.stack(rows).astype(np.int32)
    loss_mask = np.zeros(tokens.shape, bool)
    loss_mask[:, 5:] = True
    batch = S.shard_batch(
        mesh,
        dict(
            tokens=tokens,
            mask=np.ones(tokens.shape, bool),
            loss_mask=loss_mask,
            advantages=np.asarray(grpo.advantages([1.0] * 8 + [0.0] * 8, 16)),
        ),
    )
    ref_params = params()
    batch["ref_logp"] = logprobs(ref_params, batch)
    state = grpo.init_train_state(CONFIG, TX, mesh, params=ref_params)
    seen = []
    for _ in range(6):
        # As the loop does it: old log-probs from the params about to update.
        batch["old_logp"] = logprobs(state.params, batch)
        seen.append(float(np.asarray(batch["old_logp"])[0, 5:].sum()))
        state, metrics = step(state, batch)
        assert int(metrics["skipped"]) == 0
        assert float(metrics["clip_frac"]) == 0.0  # on-policy
    seen.append(float(np.asarray(logprobs(state.params, batch))[0, 5:].sum()))
    assert all(b > a for a, b in zip(seen, seen[1:])), seen
    assert seen[-1] - seen[0] > 1.0, seen


def test_micro_batched_logprobs_equal_one_pass_on_a_sharded_batch():
    """The reference pass runs in micro-batches (the whole batch's attention
    would not fit a chip); rows come back in their order, values unchanged."""
    mesh = S.make_mesh(data=2, fsdp=4)
    batch = make_batch(3, LENS, LENS[::-1])
    placed = S.shard_batch(mesh, {k: batch[k] for k in ("tokens", "mask")})
    whole = grpo.jit_logprobs(CONFIG, grpo.LearnerConfig(), mesh)(params(), placed)
    micro_cfg = grpo.LearnerConfig(micro_batch_size=8)
    micro = grpo.jit_logprobs(CONFIG, micro_cfg, mesh)(params(), placed)
    assert micro.sharding.spec == S.batch_sharding(mesh).spec
    np.testing.assert_allclose(np.asarray(micro), np.asarray(whole), atol=1e-6)
    assert np.abs(np.asarray(whole)).max() > 0.1  # real log-probs, not zeros


def test_reference_weights_in_compute_dtype_give_identical_logprobs():
    """With bf16 compute the model casts every matmul weight at use, so the
    reference policy stored in bf16 (train.run keeps it so) scores the same."""
    config = CONFIG.replace(dtype="bfloat16")
    ref = random_params(config, seed=4)
    from rlvr_jax import sampler

    cast = sampler.compute_dtype_params(config, ref)
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
    assert nbytes(cast) < 0.55 * nbytes(ref)  # half, but for fp32 norm scales
    mesh = S.make_mesh(devices=jax.devices()[:1])
    fn = grpo.jit_logprobs(config, grpo.LearnerConfig(micro_batch_size=8), mesh)
    batch = make_batch(5, LENS, LENS[::-1])
    batch = {k: batch[k] for k in ("tokens", "mask")}
    want = np.asarray(fn(ref, batch))
    assert np.abs(want).max() > 0.1
    np.testing.assert_array_equal(np.asarray(fn(cast, batch)), want)


# ---------------------------------------------------- the real 1.5B model
def test_real_1_5b_train_step_lowers_on_8_devices_with_expected_bytes():
    config = M.ModelConfig.qwen2_5_math_1_5b()
    mesh = S.make_mesh(data=2, fsdp=4)
    tx = optimizer.adamw(1e-6)
    cfg = grpo.LearnerConfig(micro_batch_size=8)
    state = grpo.sharded_abstract_state(config, tx, mesh)
    rows, t = 16, 4096
    bs = S.batch_sharding(mesh)
    sds = lambda dtype, shape=(rows, t): jax.ShapeDtypeStruct(shape, dtype, sharding=bs)
    batch = dict(
        tokens=sds(jnp.int32),
        mask=sds(jnp.bool_),
        loss_mask=sds(jnp.bool_),
        advantages=sds(jnp.float32, (rows,)),
        old_logp=sds(jnp.float32),
        ref_logp=sds(jnp.float32),
    )
    lowered = grpo.jit_train_step(config, cfg, tx, mesh).lower(state, batch)
    assert "sharding" in lowered.as_text()[:200_000]
    grpo.jit_logprobs(config, cfg, mesh).lower(state.params, batch)

    # Per device: every matrix split 4-way over 'fsdp' (data replicates);
    # biases and norm scales (small) replicated.
    total = 1_543_714_304
    biases = 28 * (12 + 2 + 2) * 128
    norms = 28 * 2 * 1536 + 1536
    per_device_params = (total - biases - norms) // 4 + biases + norms
    assert S.bytes_per_device(state.params) == 4 * per_device_params
    # AdamW mu and nu mirror the params; two int32 counts (adam, schedule).
    assert S.bytes_per_device(state.opt_state) == 2 * 4 * per_device_params + 8
    assert S.bytes_per_device(state) == 3 * 4 * per_device_params + 8 + 8


@pytest.mark.slow
def test_real_1_5b_fsdp_partitioning_gathers_weights_not_activations():
    """Compiles (no run) the 1.5B step on an 8-way FSDP mesh and reads the HLO.

    Without activation constraints GSPMD all-reduced whole [rows, chunk, V]
    logits and MLP activations; with them, no collective moves more elements
    than the largest weight (the embedding), and temp memory stays bounded.
    """
    config = M.ModelConfig.qwen2_5_math_1_5b()
    mesh = S.make_mesh(data=1, fsdp=8)
    tx = optimizer.adamw(1e-6)
    state = grpo.sharded_abstract_state(config, tx, mesh)
    rows, t = 16, 1024
    bs = S.batch_sharding(mesh)
    sds = lambda dtype, shape=(rows, t): jax.ShapeDtypeStruct(shape, dtype, sharding=bs)
    batch = dict(
        tokens=sds(jnp.int32),
        mask=sds(jnp.bool_),
        loss_mask=sds(jnp.bool_),
        advantages=sds(jnp.float32, (rows,)),
        old_logp=sds(jnp.float32),
        ref_logp=sds(jnp.float32),
    )
    cfg = grpo.LearnerConfig(micro_batch_size=8)
    compiled = grpo.jit_train_step(config, cfg, tx, mesh).lower(state, batch).compile()
    largest_weight = config.vocab_size * config.d_model
    for line in compiled.as_text().splitlines():
        if not re.search(r"\b(all-reduce|all-gather|reduce-scatter)\(", line):
            continue
        for dims in re.findall(r"[a-z0-9]+\[([\d,]+)\]", line.split("(")[0]):
            size = math.prod(int(d) for d in dims.split(","))
            assert size <= largest_weight, line[:200]
    assert compiled.memory_analysis().temp_size_in_bytes < 6 * 2**30

"""PPO's step in the packed learner: GAE targets placed on packed columns
(against the plain-numpy oracle of veRL's math), the critic's gradient
invariant to micro-batching and packing, its state through a checkpoint,
and the config's refusals.

The end-to-end runs (learning, kill -9 resume, two processes) are in
tests/test_ppo_runs.py (slow).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import base_config, build, sharding
from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import io as io_lib
from rlvr_jax.learner import critic, packing, ppo
from rlvr_jax.learner import optimizer as optimizer_lib
from rlvr_jax.model import params as params_lib
from tests import ppo_oracle as oracle
from tests.learner_fixtures import CONFIG, random_params

R = 6  # the response width of veRL's layout (max_new_tokens)


def _sequences(seed=0):
    """Ragged prompts and responses: a full-length (truncated) response, an
    empty one, and others."""
    rng = np.random.default_rng(seed)
    prompt_lens = [3, 5, 2, 4, 3]
    resp_lens = [R, 2, 0, 4, 1]
    prompts = [rng.integers(1, 60, size=n) for n in prompt_lens]
    responses = [rng.integers(1, 60, size=n) for n in resp_lens]
    return prompts, responses, np.array(resp_lens)


def _packed(prompts, responses, limit=16):
    n = len(prompts)
    return packing.pack(
        prompts, responses, np.zeros(n, np.float32), agg="token-mean", limit=limit
    )


def _one_per_row(prompts, responses, width=16):
    """Each sequence alone in its row: the unpacked layout."""
    n = len(prompts)
    out = {
        k: np.zeros((n, width), dt)
        for k, dt in (
            ("tokens", np.int32),
            ("segment_ids", np.int32),
            ("positions", np.int32),
        )
    }
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        seq = np.concatenate([p, r])
        out["tokens"][i, : len(seq)] = seq
        out["segment_ids"][i, : len(seq)] = i + 1
        out["positions"][i, : len(seq)] = np.arange(len(seq))
    out["mask"] = out["segment_ids"] != 0
    return out


def _oracle_positions(batch, lengths):
    """(row, first response column) of each sequence, by a plain scan."""
    seg = batch["segment_ids"]
    where = {}
    for r in range(seg.shape[0]):
        for c in range(seg.shape[1]):
            if seg[r, c]:
                where.setdefault(int(seg[r, c]) - 1, []).append((r, c))
    return [
        (where[i][0][0], where[i][-1][1] + 1 - int(lengths[i]))
        for i in range(len(lengths))
    ]


@pytest.mark.parametrize("kl", [False, True], ids=["kl_in_loss", "kl_in_reward"])
def test_packed_targets_equal_the_oracle_of_verl(kl):
    prompts, responses, lengths = _sequences()
    batch = _packed(prompts, responses)
    rng = np.random.default_rng(1)
    shape = batch["tokens"].shape
    values_bw = rng.normal(size=shape).astype(np.float32)
    scores = np.array([1.0, 0.0, 1.0, 0.0, 1.0], np.float32)
    logp, ref = (-rng.uniform(0.1, 3, size=shape).astype(np.float32) for _ in "ab")
    kl_arg = ppo.KLInReward(logp, ref, 0.05, "low_var_kl") if kl else None
    arrays, metrics = ppo.targets(
        batch, values_bw, scores, lengths, R, gamma=1.0, lam=0.95, kl=kl_arg
    )

    # The oracle in veRL's [N, R] layout, from a plain scan of the batch.
    n = len(lengths)
    mask = np.arange(R)[None, :] < lengths[:, None]
    cmask = oracle.critic_mask(mask)
    pos = _oracle_positions(batch, lengths)
    values_nr = np.zeros((n, R))
    logp_nr, ref_nr = np.zeros((n, R)), np.zeros((n, R))
    for i, (row, first) in enumerate(pos):
        for j in range(R):
            if cmask[i, j]:
                values_nr[i, j] = values_bw[row, first - 1 + j]
            if mask[i, j]:
                logp_nr[i, j], ref_nr[i, j] = logp[row, first + j], ref[row, first + j]
    rewards = oracle.token_level_rewards(scores, mask)
    if kl:
        rewards, kl_mean = oracle.kl_in_reward(
            rewards, logp_nr, ref_nr, mask, 0.05, "low_var_kl"
        )
        np.testing.assert_allclose(metrics["critic/kl"], kl_mean, rtol=1e-5)
    adv, ret = oracle.gae(rewards, values_nr, mask, 1.0, 0.95)

    expect = {k: np.zeros(shape) for k in ("advantages", "returns", "old_values")}
    expect_mask = np.zeros(shape, bool)
    for i, (row, first) in enumerate(pos):
        for j in range(R):
            if mask[i, j]:
                expect["advantages"][row, first + j] = adv[i, j]
            if cmask[i, j]:
                expect["returns"][row, first - 1 + j] = ret[i, j]
                expect["old_values"][row, first - 1 + j] = values_nr[i, j]
                expect_mask[row, first - 1 + j] = True
    for k, v in expect.items():
        np.testing.assert_allclose(arrays[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(arrays["value_mask"], expect_mask)
    # The actor's advantages sit exactly on its loss tokens.
    assert not np.any(arrays["advantages"][~batch["loss_mask"]])
    np.testing.assert_allclose(
        metrics["critic/vf_explained_var"],
        oracle.explained_variance(ret, values_nr, mask),
        rtol=1e-5,
    )
    np.testing.assert_allclose(metrics["critic/returns/mean"], ret[mask].mean(), 1e-5)
    np.testing.assert_allclose(
        metrics["critic/rewards/mean"], rewards.sum(axis=1).mean(), rtol=1e-5
    )


def test_a_full_length_response_keeps_no_value_after_its_last_token():
    """veRL's critic mask: V_0..V_L for L < R, V_0..V_{R−1} for L = R."""
    prompts, responses, lengths = _sequences()
    batch = _packed(prompts, responses)
    lay = ppo.layout(batch, lengths, R)
    counts = lay.critic_mask.sum(axis=1)
    np.testing.assert_array_equal(counts, np.where(lengths < R, lengths + 1, R))
    # And the value mask lies inside each sequence's own segment.
    arrays, _ = ppo.targets(
        batch, np.zeros(batch["tokens"].shape), np.zeros(5), lengths, R, gamma=1, lam=1
    )
    assert np.all(batch["segment_ids"][arrays["value_mask"]] > 0)
    assert arrays["value_mask"].sum() == counts.sum()


def test_a_response_longer_than_the_width_is_refused():
    prompts, responses, lengths = _sequences()
    with pytest.raises(ValueError, match="exceeds"):
        ppo.layout(_packed(prompts, responses), lengths, R - 1)


# --------------------------------------------------------- critic gradients
def _critic_params():
    rng = jax.random.key(3)
    body = random_params(critic.decoder_config(CONFIG), seed=2)
    head = critic.init_head(CONFIG, rng)
    # A head far from zero, so the value loss has real gradients everywhere.
    head = {"kernel": head["kernel"] * 20, "bias": head["bias"] + 0.3}
    return {critic.DECODER: body, critic.VALUE_HEAD: head}


def _critic_batch(host, lengths, seed=5):
    """A layout's batch with GAE targets from old values and scores that are
    the same per (sequence, position) in any layout."""
    values = np.sin(
        seed + 7.3 * host["segment_ids"] + 1.1 * host["positions"], dtype=np.float32
    )
    scores = np.array([1.0, 0.0, 1.0, 1.0, 0.0], np.float32)
    arrays, _ = ppo.targets(host, values, scores, lengths, R, gamma=1.0, lam=1.0)
    batch = {k: host[k] for k in critic.VALUE_INPUTS}
    batch.update({k: arrays[k] for k in critic.CRITIC_TARGETS})
    return batch


def _grads(batch, micro_batch_size=None):
    cfg = critic.CriticConfig(micro_batch_size=micro_batch_size, remat=False)
    fn = jax.jit(
        lambda p, b: critic.loss_and_grads(p, b, model_config=CONFIG, critic_config=cfg)
    )
    return fn(_critic_params(), jax.tree.map(jnp.asarray, batch))


def test_critic_gradients_do_not_depend_on_micro_batches_or_packing():
    prompts, responses, lengths = _sequences()
    packed = _critic_batch(_packed(prompts, responses), lengths)
    rows = _critic_batch(_one_per_row(prompts, responses), lengths)
    assert packed["tokens"].shape[0] < rows["tokens"].shape[0]  # really packed
    g_rows, m_rows = _grads(rows)
    g_packed, m_packed = _grads(packed)
    g_micro, m_micro = _grads(rows, micro_batch_size=1)
    assert m_rows["vf_loss"] > 0.05  # a loss with something to learn
    for g, m in ((g_packed, m_packed), (g_micro, m_micro)):
        for k in ("vf_loss", "vf_clipfrac", "vpred_mean", "num_tokens"):
            np.testing.assert_allclose(m[k], m_rows[k], rtol=1e-5, err_msg=k)
        for (path, x), y in zip(
            jax.tree_util.tree_leaves_with_path(g),
            jax.tree.leaves(g_rows),
            strict=True,
        ):
            scale = float(jnp.max(jnp.abs(y)))
            assert scale > 0, jax.tree_util.keystr(path)
            np.testing.assert_allclose(
                x, y, rtol=0, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path)
            )


def test_critic_value_loss_equals_the_oracle_through_the_model():
    prompts, responses, lengths = _sequences()
    batch = _critic_batch(_packed(prompts, responses), lengths)
    _, metrics = _grads(batch)
    v = np.asarray(
        critic.values(CONFIG, _critic_params(), jax.tree.map(jnp.asarray, batch))
    )
    m = batch["value_mask"]
    loss, clipfrac = oracle.value_loss(
        v[m][None],
        batch["returns"][m][None],
        batch["old_values"][m][None],
        np.ones((1, int(m.sum())), bool),
        0.5,
    )
    np.testing.assert_allclose(metrics["vf_loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["vf_clipfrac"], clipfrac, rtol=1e-6)


# -------------------------------------------------------------- the state
def test_the_critic_state_starts_from_the_policy_and_round_trips_a_checkpoint(
    tmp_path,
):
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    tx = optimizer_lib.adamw(1e-3)
    critic_tx = optimizer_lib.adamw(1e-5)
    policy = random_params(CONFIG, seed=4)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    try:
        state, critic_state, start, meta = build.start_states(
            ckpt, CONFIG, tx, mesh, policy, critic_tx, jax.random.key(0)
        )
        assert start == 0 and meta is None
        body = critic_state.params[critic.DECODER]
        for path, x in jax.tree_util.tree_leaves_with_path(body):
            y = policy
            for key in path:
                y = y[key.key]
            np.testing.assert_array_equal(x, y)
        head = critic_state.params[critic.VALUE_HEAD]
        assert head["kernel"].shape == (CONFIG.d_model, 1)
        assert np.all(np.asarray(head["bias"]) == 0) and np.any(head["kernel"])

        items = {k: v for k, v in state._asdict().items() if k != "params"}
        items[build.CRITIC_ITEM] = critic_state._asdict()
        ckpt.save(3, state.params, items, {"note": 1})
        ckpt.wait()
        _, again, start, meta = build.start_states(
            ckpt, CONFIG, tx, mesh, None, critic_tx, None
        )
        assert start == 3 and meta == {"note": 1}
        assert jax.tree.structure(again) == jax.tree.structure(critic_state)
        for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(critic_state)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    finally:
        ckpt.close()


# ---------------------------------------------------------------- config
def _config(**changes):
    c = base_config.base_config()
    for dotted, value in changes.items():
        node = c
        *path, last = dotted.split(".")
        for key in path:
            node = node[key]
        node[last] = value
    return c


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"algorithm.adv_estimator": "ppo"}, "adv_estimator='ppo' must be one of"),
        ({"algorithm.lam": 1.5}, r"algorithm.lam=1.5 must be in \[0, 1\]"),
        ({"algorithm.kl_in_reward": True}, "needs algorithm.adv_estimator='gae'"),
        (
            {"algorithm.adv_estimator": "gae", "algorithm.kl_in_reward": True},
            "not both; set --config.loss.kl_coef=0",
        ),
        (
            {
                "algorithm.adv_estimator": "gae",
                "algorithm.kl_in_reward": True,
                "loss.kl_coef": 0.0,
                "algorithm.kl_penalty": "full",
            },
            "kl_penalty='full' must be one of",
        ),
        (
            {"algorithm.adv_estimator": "gae", "critic.cliprange_value": 0.0},
            "critic.cliprange_value=0.0 must be > 0",
        ),
        (
            {"algorithm.adv_estimator": "gae", "critic.optim.lr": -1.0},
            "critic.optim.lr=-1.0 must be positive",
        ),
    ],
)
def test_bad_algorithm_settings_are_one_line(changes, message):
    with pytest.raises(ValueError, match=message):
        build.check_config(_config(**changes))


def test_the_reference_is_kept_for_a_kl_in_the_loss_or_in_the_reward():
    assert build.uses_reference(_config())
    assert not build.uses_reference(_config(**{"loss.kl_coef": 0.0}))
    ppo_kl_reward = _config(
        **{
            "algorithm.adv_estimator": "gae",
            "algorithm.kl_in_reward": True,
            "loss.kl_coef": 0.0,
        }
    )
    build.check_config(ppo_kl_reward)
    assert build.uses_reference(ppo_kl_reward)
    assert build.uses_critic(ppo_kl_reward) and not build.uses_critic(_config())


# ------------------------------------------------------------------ a run
def saved_critic_state(workdir, step, config):
    """The critic's train state of a run's newest checkpoint (`step`), on
    one device."""
    _, model = build.random_preset(config)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(workdir)))
    try:
        assert ckpt.latest_step() == step
        _, critic_state, start, _ = build.start_states(
            ckpt,
            model,
            build.optimizer(config),
            mesh,
            None,
            build.critic_optimizer(config),
            None,
        )
    finally:
        ckpt.close()
    assert start == step
    return critic_state


def test_a_tiny_ppo_run_warms_the_critic_up_then_trains_both(tmp_path):
    """critic.warmup=2: step 1 updates only the critic (the actor's weights
    stay those of step 0), step 2 both; veRL's metrics are logged."""
    from rlvr_jax import train
    from tests.test_train import pi1_config

    config = pi1_config("tiny,steps=2")
    config.algorithm.adv_estimator = "gae"
    config.critic.warmup = 2
    config.eval.path = ""  # no evaluation programs to compile
    config.checkpoint.every = 1
    config.checkpoint.keep = 3
    workdir = tmp_path / "ppo"
    train.run(config, str(workdir))
    rows = [
        r for r in io_lib.read_log(str(workdir / "metrics.jsonl")) if "reward/mean" in r
    ]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("critic/vf_loss", "critic/vf_explained_var", "critic/grad_norm"):
            assert np.isfinite(r[key]), key
        assert r["critic/grad_norm"] > 0
    assert "loss/pg" not in rows[0] and "loss/pg" in rows[1]
    _, p0 = ckpt_lib.load_params(str(workdir), 0)
    _, p1 = ckpt_lib.load_params(str(workdir), 1)
    _, p2 = ckpt_lib.load_params(str(workdir), 2)
    for x, y in zip(jax.tree.leaves(p0), jax.tree.leaves(p1), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    moved = [
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True)
    ]
    assert max(moved) > 0
    # The last step's critic, as transformers reads it.
    critic_dir = workdir / train.CRITIC_EXPORT_DIR / "step_2"
    assert (workdir / "hf" / "step_2" / "config.json").exists()
    _, model = build.random_preset(config)
    exported = params_lib.load_critic_hf(str(critic_dir), model)
    saved = saved_critic_state(workdir, 2, config)
    for x, y in zip(
        jax.tree.leaves(exported), jax.tree.leaves(saved.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

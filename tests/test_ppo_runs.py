"""PPO end to end (slow: each test is one to three tiny runs, 1-3 min).

A tiny PPO run learns the built-in task as GRPO does; kill -9 then resume
gives the uninterrupted run, the critic's state included; two processes
equal one, through the critic's values gather, GAE and the KL in the reward.
"""

from __future__ import annotations

import signal
import subprocess

import jax
import numpy as np
import pytest

from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import io as io_lib
from tests import test_multihost as multihost
from tests.test_multihost import cache_dir  # noqa: F401 - a fixture
from tests.test_ppo import saved_critic_state
from tests.test_train import (
    REPO,
    assert_same_params,
    env,  # noqa: F401 - a fixture
    main_cmd,
    pi1_config,
    run_main,
    stable_rows,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow

PPO = ("--config.algorithm.adv_estimator=gae",)


def _config(arg="tiny"):
    config = pi1_config(arg)
    with config.unlocked():
        config.algorithm.adv_estimator = "gae"
    return config


def test_ppo_learns_the_builtin_task_and_its_critic_explains_the_returns(tmp_path):
    """20 steps, as GRPO's learning test: the reward rises from chance to
    near 1; the critic's values follow the reward and explain part of the
    returns' variance (a constant critic scores ~1e-5 / Var(R))."""
    from rlvr_jax import train

    config = _config("tiny,steps=20")
    config.eval.every = 0
    train.run(config, str(tmp_path / "ppo"))
    rows = [
        r
        for r in io_lib.read_log(str(tmp_path / "ppo" / "metrics.jsonl"))
        if "reward/mean" in r
    ]
    rewards = [r["reward/mean"] for r in rows]
    assert len(rewards) == 20
    first, last = np.mean(rewards[:4]), np.mean(rewards[-4:])
    assert first < 0.25, rewards
    assert last > 0.6, rewards
    explained = [r["critic/vf_explained_var"] for r in rows]
    assert np.mean(explained[:2]) < 0, explained  # a fresh head: worse than constant
    assert np.mean(explained[-4:]) > 0.005, explained
    values = np.mean([r["critic/values/mean"] for r in rows[-4:]])
    assert abs(values - last) < 0.2, (values, last)


def test_sigkill_then_resume_matches_an_uninterrupted_ppo_run(env, tmp_path):  # noqa: F811
    arg = "tiny,steps=4"
    overrides = (*PPO, "--config.checkpoint.every=2", "--config.checkpoint.keep=5")
    whole = tmp_path / "whole"
    out = run_main(env, whole, arg, *overrides)
    assert out.returncode == 0, out.stderr[-3000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        main_cmd(cut, arg, *overrides),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(cut, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(ckpt_lib.available_steps(str(cut))) < 4
    out = run_main(env, cut, arg, *overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout

    rows_cut, rows_whole = stable_rows(cut), stable_rows(whole)
    assert "critic/vf_loss" in rows_whole[-1]
    assert rows_cut == rows_whole
    assert_same_params(str(cut), str(whole))
    config = _config()
    a, b = saved_critic_state(cut, 4, config), saved_critic_state(whole, 4, config)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_two_processes_equal_one_process_with_a_critic_and_the_kl_in_the_reward(
    cache_dir,  # noqa: F811
    tmp_path,
):
    arg = "tiny,steps=2"
    opts = (
        *PPO,
        "--config.eval.path=",
        "--config.loss.kl_coef=0",
        "--config.algorithm.kl_in_reward=True",
        "--config.checkpoint.every=1",
    )
    two, one = tmp_path / "two", tmp_path / "one"
    multihost.run(two, arg, *opts, processes=2, devices=2, cache_dir=cache_dir)
    multihost.run(one, arg, *opts, processes=1, devices=4, cache_dir=cache_dir)
    a, b = multihost.rows(two), multihost.rows(one)
    assert [r["step"] for r in a] == [1, 2]
    assert "critic/kl" in a[-1] and "critic/vf_loss" in a[-1]
    # Whitened GAE advantages have mean 0 and variance 1, and on-policy the
    # policy loss is minus their mean: both ~0 up to fp32 noise.
    multihost.assert_close_rows(a, b, unit_scale=("loss/pg", "critic/advantages/mean"))
    for step in (1, 2):
        multihost.assert_same_checkpoints(two, one, step)
    config = _config()
    multihost.assert_close_trees(
        saved_critic_state(two, 2, config), saved_critic_state(one, 2, config)
    )

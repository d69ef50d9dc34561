"""The planner with PPO's critic: its programs, its train state in every
phase, its costs, and configs/ppo_pi1.py.

The plan tests share one tiny PPO plan (about a minute of compiling on two
cores) and are in the slow suite; the config test runs by default.

The tiny model and 4-chip v5e topology of tests/test_plan.py, at smaller
shapes; the GRPO plan compared with reuses the PPO plan's compiled programs
(the compile cache), so it compiles nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import pytest

from rlvr_jax import build
from rlvr_jax import plan as plan_lib
from rlvr_jax import sharding as S
from rlvr_jax.learner import critic
from rlvr_jax.planning import chips, programs, report, search
from tests.test_plan import MODEL, TOPOLOGY, tiny_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="needs libtpu (the [tpu] extra) to compile for TPU topologies",
)

PPO = {"algorithm.adv_estimator": "gae"}
# test_plan's tiny run at a quarter of its compile time: 16 responses of
# 8 + 56 tokens in two micro-batches (two rows per chip), no evaluation.
SMALL = {
    **{"data.prompt_buckets": (8,), "data.max_prompt_len": 8},
    **{"train.batch_size": 4, "rollout.n": 4, "rollout.chunk_size": 16},
    **{"rollout.max_new_tokens": 56, "train.micro_batch_size": 8, "eval.every": 0},
}


def small_config(**changes):
    return tiny_config(**SMALL, **changes)


def _memory_plan(config):
    return plan_lib.plan(
        config, TOPOLOGY, model=MODEL, eval_examples=0, search=False, costs=False
    )


@pytest.fixture(scope="module")
def plans():
    """(GRPO, PPO) memory plans of the small run, and the PPO run."""
    ppo = _memory_plan(small_config(**PPO))
    grpo = _memory_plan(small_config())
    run = build.plan_run(
        small_config(**PPO), chips.topology_devices(TOPOLOGY), 0, MODEL
    )
    assert run.shapes.learner_rows == 2 * run.shapes.micro_batch == 16
    return grpo, ppo, run


def _critic_state_bytes(run) -> int:
    return S.bytes_per_device(
        critic.sharded_abstract_state(MODEL, run.critic_tx, run.mesh)
    )


@pytest.mark.slow  # the module's PPO plan: ~1 min on 2 cores
def test_a_ppo_plan_compiles_the_critic_programs(plans):
    grpo, ppo, run = plans
    assert run.critic is not None and run.critic_tx is not None
    assert run.reference and not run.kl_in_reward  # KL in the loss, as GRPO's
    names = [q.name for q in ppo.programs]
    assert names == [
        "prepare",
        "sample",
        "ref_logprobs",
        "critic_values",
        "critic_step",
        "train_step",
    ]
    assert "critic_step" not in {q.name for q in grpo.programs}
    for name in ("critic_values", "critic_step"):
        q = ppo.program(name)
        assert not q.oom and q.arguments > 0 and q.outputs > 0, q
        assert q.total - q.resident_args > 0, q
    assert ppo.program("critic_step").temp > 0
    state = _critic_state_bytes(run)
    # The step's state is donated, its outputs reuse it; neither program's
    # critic arguments are counted again in its phase.
    step = ppo.program("critic_step")
    assert step.resident_args == state
    assert step.alias >= S.bytes_per_device(
        critic.sharded_abstract_state(MODEL, run.critic_tx, run.mesh).params
    )
    values = ppo.program("critic_values")
    params = critic.sharded_abstract_state(MODEL, run.critic_tx, run.mesh).params
    assert values.resident_args == S.bytes_per_device(params)
    text = report.format_plan(ppo)
    assert "(train state + critic's train state + reference + " in text
    assert "critic's train state" not in report.format_plan(grpo)


@pytest.mark.slow  # the module's PPO plan: ~1 min on 2 cores
def test_the_critic_state_is_resident_in_every_phase(plans):
    grpo, ppo, run = plans
    state = _critic_state_bytes(run)
    assert state > 0
    assert set(grpo.phases) < set(ppo.phases)
    for name, resident in grpo.phases.items():
        # The same program in both plans: the critic state is all they differ by.
        assert dataclasses.astuple(ppo.program(name)) == dataclasses.astuple(
            grpo.program(name)
        )
        assert ppo.phases[name] - resident == state, name
    actor = S.bytes_per_device(
        programs.learner.sharded_abstract_state(MODEL, run.tx, run.mesh)
    )
    ref = S.bytes_per_device(programs.reference_params(run, MODEL))
    for name in ("critic_values", "critic_step"):
        q = ppo.program(name)
        want = actor + state + ref + q.total - q.resident_args
        assert ppo.phases[name] == want, name


@pytest.mark.slow  # the module's PPO plan: ~1 min on 2 cores
def test_the_critic_sets_the_fitting_micro_batch(plans):
    """When a critic phase is the one over, the micro-batch is shrunk for it
    (the critic runs in the actor's micro-batches), and the search's
    re-plans are asked for that."""
    _, ppo, run = plans
    over = ppo.program("critic_step")
    hbm = ppo.phases["critic_step"] - 0.4 * over.temp
    phases = {k: 0 if k != "critic_step" else v for k, v in ppo.phases.items()}
    shrunk = dataclasses.replace(ppo, phases=phases, hbm_bytes_per_chip=hbm)
    assert not shrunk.fits
    largest = search.largest_sizes(run, shrunk)
    assert largest["train.micro_batch_size"] < run.shapes.micro_batch
    shrunk.largest = largest
    asked = []

    def replan(changes):
        asked.append(changes)
        return dataclasses.replace(shrunk, phases={"critic_step": 0})

    config = small_config(**PPO)
    found = search.fitting_overrides(
        shrunk, get=lambda k: plan_lib.get(config, k), replan=replan
    )
    assert found == asked[0]
    assert found["train.micro_batch_size"] == largest["train.micro_batch_size"]


@pytest.mark.slow  # the module's PPO plan: ~1 min on 2 cores
def test_the_critic_step_costs_about_the_actor_step(plans):
    """Same decoder, same batch, same micro-batches: the critic's update
    costs the actor's but for the LM head (a value head of one column), and
    its value pass about a forward, a quarter of its update's FLOPs."""
    _, _, run = plans
    costed = programs.compile_lib.cost_run(run)
    actor, actor_bytes, _ = programs.train_step_cost(costed)
    step, step_bytes, _ = programs.critic_step_cost(costed)
    values, _, _ = programs.critic_values_cost(costed)
    assert 0.7 * actor < step < actor
    assert 0.5 * actor_bytes < step_bytes < 2 * actor_bytes
    assert 0.15 * step < values < 0.4 * step


@pytest.mark.slow  # the module's PPO plan: ~1 min on 2 cores
def test_a_kl_in_the_reward_keeps_the_reference_and_plans_the_policy_pass(plans):
    """veRL's KL penalty in the reward (loss.kl_coef = 0): the reference is
    kept all the same, and the policy's own log-prob pass (π_old) is planned
    and timed with the log-prob passes."""
    _, ppo, run = plans
    config = small_config(
        **PPO, **{"algorithm.kl_in_reward": True, "loss.kl_coef": 0.0}
    )
    kl = build.plan_run(config, run.mesh.devices.flat, 0, MODEL)
    assert kl.reference and kl.kl_in_reward and kl.critic is not None
    compiled = programs.compile_old_logprobs(kl, MODEL, kl.learner)
    q = programs._program("old_logprobs", compiled, 1, 0.0, 0.0, ppo.chip)
    assert not q.oom and q.outputs > 0 and q.arguments > 0
    timed = [dataclasses.replace(p, seconds=1.0) for p in [*ppo.programs, q]]
    times = report.step_times(kl, timed)
    assert times["logprob_passes"] == 2.0 and times["critic"] == 2.0
    assert list(times) == [
        "sampling",
        "logprob_passes",
        "critic",
        "update",
        "evaluation",
    ]


def _config(path: str, arg: str | None = None):
    """`get_config(arg)` of a config file of this repository, loaded by path
    as `--config=path:arg` loads it."""
    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("plan_ppo_config", root / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_the_ppo_pi1_config_is_pi1_with_gae_and_plans():
    for arg in (None, "tiny,steps=3"):
        pi1 = _flat(_config("configs/pi1.py", arg).to_dict())
        ppo = _flat(_config("configs/ppo_pi1.py", arg).to_dict())
        diff = {k: v for k, v in ppo.items() if pi1.get(k) != v}
        # The recipe's one change; on the real model also 128 decode slots
        # of slot caches (no page pool), so that the critic's state fits a
        # v5e-8 beside the rollout.
        layout = (
            {}
            if arg
            else {
                "rollout.chunk_size": 128,
                "rollout.page_size": 0,
                "rollout.pages": 0,
                "rollout.prefill_chunk": 0,
            }
        )
        assert diff == {"algorithm.adv_estimator": "gae", **layout}, arg
        assert ppo.keys() == pi1.keys()
    config = _config("configs/ppo_pi1.py", "tiny,steps=3")
    assert config.train.steps == 3 and config.loss.kl_coef == 0.001
    run = build.plan_run(config, chips.topology_devices(TOPOLOGY), 8)
    assert run.critic == build.critic_config(config, run.learner)
    assert run.critic.cliprange_value == 0.5
    assert run.critic.max_tokens_per_micro_batch == (
        run.learner.max_tokens_per_micro_batch
    )
    assert run.reference and not run.kl_in_reward

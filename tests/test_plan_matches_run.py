"""The plan compiles what the run runs: spied on a tiny run on 8 CPU devices.

`train.run` and the planner (`build.plan_run` + `planning.programs`) both go
through the components' own jitted programs: the sampler's pack and rollout
programs and the learner's train step and log-prob pass. Each is wrapped
here so that every call (the run) and every lowering (the plan) records its
arguments: shapes, dtypes, shardings and static arguments. The plan must have
compiled exactly the rollouts the run ran (training, and evaluation over two
sets in chunks), the same train state and parameters, and a learner batch of
the run's layout whose shape is the one the run packs when every response
runs to max_new_tokens (the run's own batches, from shorter responses, are
never larger).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from rlvr_jax import base_config, build, learner, train
from rlvr_jax.learner import packing
from rlvr_jax.learner import step as step_lib
from rlvr_jax.planning import chips, programs
from rlvr_jax.rollout import engine, sampling


@dataclasses.dataclass(frozen=True)
class Leaf:
    shape: tuple
    dtype: str
    sharding: object  # None for scalars (placed by the program either way)

    def same(self, other: Leaf) -> bool:
        if (self.shape, self.dtype) != (other.shape, other.dtype):
            return False
        if self.sharding is None or other.sharding is None:
            return self.sharding is other.sharding
        return self.sharding.is_equivalent_to(other.sharding, len(self.shape))


def _leaf(x) -> Leaf:
    shape = tuple(np.shape(x))
    sharding = getattr(x, "sharding", None) if shape else None
    return Leaf(shape, str(x.dtype), sharding)


def _signature(args, kwargs):
    """(array leaves, tree structure, static kwargs) of a call's arguments."""
    leaves, tree = jax.tree.flatten(args)
    arrays = tuple(_leaf(x) for x in leaves if hasattr(x, "dtype"))
    statics = tuple(x for x in leaves if not hasattr(x, "dtype"))
    return arrays, str(tree), statics, tuple(sorted(kwargs.items(), key=str))


def _same(a, b) -> bool:
    return (
        len(a[0]) == len(b[0])
        and all(x.same(y) for x, y in zip(a[0], b[0]))
        and a[1:] == b[1:]
    )


class Spy:
    """A jitted function whose calls and lowerings are recorded."""

    def __init__(self, fn, log, name, statics=()):
        self.fn, self.log, self.name, self.statics = fn, log, name, statics

    def __call__(self, *args, **kwargs):
        self.log.append(("run", self.name, self.statics, _signature(args, kwargs)))
        return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs):
        self.log.append(("plan", self.name, self.statics, _signature(args, kwargs)))
        return self.fn.lower(*args, **kwargs)


def _write_set(path, answers):
    path.parent.mkdir(parents=True)
    rows = [{"problem": f"What is {a} + 0?", "answer": str(a)} for a in answers]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _config(tmp_path):
    """2 prompts × 4 responses on data 2 × fsdp 4: 8 responses through 6
    decode slots (rounded up to 8, a multiple of the devices but not of
    n × devices); evaluation of two sets (3 + 4 problems) in chunks of 3."""
    c = base_config.base_config()
    base_config.make_tiny(c)
    c.mesh.data, c.mesh.fsdp = 2, 4
    c.data.prompt_buckets = (192,)
    c.data.max_prompt_len = 192
    c.data.replicate = 2
    c.train.batch_size = 2
    c.train.micro_batch_size = 8
    c.rollout.n = 4
    c.rollout.chunk_size = 6
    c.rollout.max_new_tokens = 6
    c.eval.max_new_tokens = 6
    c.eval.chunk_size = 3
    c.eval.every = 1
    c.eval.path = ",".join(
        [
            _write_set(tmp_path / "sets" / "small" / "test.jsonl", [1, 2, 3]),
            _write_set(tmp_path / "sets" / "large" / "test.jsonl", [4, 5, 6, 7]),
        ]
    )
    c.train.steps = 1
    c.checkpoint.every = 1
    c.loss.kl_coef = 0.001  # the reference pass is part of the step
    return c


@pytest.fixture(scope="module")
def spied(tmp_path_factory, request):
    tmp_path = tmp_path_factory.mktemp("plan_matches_run")
    config = _config(tmp_path)
    log = []
    patcher = pytest.MonkeyPatch()
    request.addfinalizer(patcher.undo)
    patcher.setattr(
        engine, "_continuous_jit", Spy(engine._continuous_jit, log, "rollout")
    )
    pack = sampling._pack_program
    patcher.setattr(
        sampling, "_pack_program", lambda s: Spy(pack(s), log, "prepare", (s,))
    )
    for name in ("jit_train_step", "jit_logprobs"):
        original = getattr(step_lib, name)

        def make(*args, _original=original, _name=name):
            # The model and learner configs (hashable) identify the program.
            statics = tuple(a for a in args[:2])
            return Spy(_original(*args), log, _name, statics)

        patcher.setattr(step_lib, name, make)
        patcher.setattr(learner, name, make)

    train.run(config, str(tmp_path / "run"))
    ran = list(log)
    log.clear()
    run = build.plan_run(config, jax.devices(), eval_examples=7)
    plan_programs = programs.compile_programs(run, chips.CHIPS["v5e"], costs=False)
    planned = list(log)
    return config, run, plan_programs, ran, planned


def _distinct(entries, name):
    out = []
    for e in entries:
        if e[1] == name and not any(_same(e[3], o[3]) and e[2] == o[2] for o in out):
            out.append(e)
    return out


@pytest.mark.slow  # suite time: a run or a compile of its own
def test_the_plan_compiles_the_rollouts_the_run_ran(spied):
    config, run, _, ran, planned = spied
    run_rollouts = _distinct(ran, "rollout")
    plan_rollouts = _distinct(planned, "rollout")
    # Training and evaluation, one program each in the run: every eval chunk
    # (3, 3 and 1 prompts) ran the same program.
    assert len(run_rollouts) == 2 == len(plan_rollouts)
    for r in run_rollouts:
        assert any(_same(r[3], p[3]) for p in plan_rollouts), r[3][2:]
    statics = {dict(p[3][3])["slots"] for p in plan_rollouts}
    assert statics == {8}  # 6 slots rounded up to the 8 devices; 3 → 8
    # Calls: a training rollout per step; evaluations at steps 0 and 1, of
    # 3 chunks each: what the plan counts.
    calls = [e for e in ran if e[1] == "rollout"]
    train_sig = next(p for p in plan_rollouts if dict(p[3][3])["settings"].n == 4)
    eval_sig = next(p for p in plan_rollouts if dict(p[3][3])["settings"].n == 1)
    n_train = sum(_same(c[3], train_sig[3]) for c in calls)
    n_eval = sum(_same(c[3], eval_sig[3]) for c in calls)
    assert n_train == config.train.steps
    assert n_eval == 2 * run.shapes.eval_calls == 2 * 3


@pytest.mark.slow  # suite time: a run or a compile of its own
def test_the_plan_packs_the_decode_weights_as_the_run_does(spied):
    _, _, _, ran, planned = spied
    run_packs = _distinct(ran, "prepare")
    plan_packs = _distinct(planned, "prepare")
    assert len(run_packs) == 1 == len(plan_packs)
    assert run_packs[0][2] == plan_packs[0][2]  # the decode weights' placement
    assert _same(run_packs[0][3], plan_packs[0][3])


@pytest.mark.slow  # suite time: a run or a compile of its own
def test_the_plan_compiles_the_train_step_and_reference_pass_the_run_ran(spied):
    config, run, _, ran, planned = spied
    for name in ("jit_train_step", "jit_logprobs"):
        run_calls = _distinct(ran, name)
        plan_calls = _distinct(planned, name)
        assert len(plan_calls) == 1, name
        (plan_call,) = plan_calls
        arrays, tree, *_ = plan_call[3]
        for r in run_calls:
            assert r[2] == plan_call[2], name  # model and learner configs
            assert r[3][1] == tree, name  # the same arguments, keys included
            for got, want in zip(r[3][0], arrays, strict=True):
                # Parameters and train state exactly; the packed batch as
                # wide as the run's packing made it, never wider than planned.
                widest = Leaf(want.shape, got.dtype, got.sharding)
                assert widest.same(want), (name, got, want)
                assert all(g <= w for g, w in zip(got.shape, want.shape)), name
        assert run_calls, name


@pytest.mark.slow  # suite time: a run or a compile of its own
def test_the_planned_batch_is_what_the_widest_step_packs(spied):
    config, run, *_ = spied
    b, n = config.train.batch_size, config.rollout.n
    width, new = config.data.prompt_buckets[0], config.rollout.max_new_tokens
    rows = b * n
    # Every prompt a whole bucket wide, every response max_new_tokens long.
    roll = sampling.Rollout(
        tokens=np.ones((rows, new), np.int32),
        logprobs=np.zeros((rows, new), np.float32),
        lengths=np.full(rows, new, np.int32),
        truncated=np.ones(rows, bool),
        prompt_index=np.repeat(np.arange(b), n),
        prompt_tokens=np.ones((rows, width), np.int32),
        prompt_mask=np.ones((rows, width), bool),
        decode_steps=new,
        slots=rows,
    )
    packed = packing.learner_batch(
        roll,
        np.zeros(rows, np.float32),
        run.learner,
        limit=build.learner_width(config),
        divisor=8,
    )
    planned = programs.learner_batch(run)
    assert packed.keys() == planned.keys()
    for key, array in packed.items():
        assert array.shape == planned[key].shape, key
        assert array.dtype == planned[key].dtype, key
    micro = step_lib.micro_rows(run.learner, packed["tokens"].shape, run.mesh)
    assert micro == run.shapes.micro_batch


def test_a_benchmark_evaluation_runs_the_programs_its_shapes_give(tiny_model, tmp_path):
    """The benchmark sweep (`python -m rlvr_jax.evaluate`) samples each
    benchmark in calls of `build.benchmark_call_prompts` prompts, each padded
    to that: one program per protocol and width, the one `engine.lower_rollout`
    gives for `engine.rollout_shape` of that many prompts."""
    import importlib.util
    import pathlib

    from rlvr_jax import evaluate, sharding
    from rlvr_jax.data import tasks as tasks_lib
    from rlvr_jax.data import tokenizer as tokenizer_lib
    from rlvr_jax.model import decoder
    from rlvr_jax.model import params as params_lib

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("eval_cfg", root / "configs/eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.model.path = tiny_model
    config.benchmarks = "math500,aime24"  # greedy × 1 and T=0.6 × 8
    config.data.limit = 3
    config.sampling.max_new_tokens = 4
    config.sampling.chunk_rows = 4  # 4 greedy prompts a call; 1 sampled one

    log = []
    patcher = pytest.MonkeyPatch()
    try:
        patcher.setattr(
            engine, "_continuous_jit", Spy(engine._continuous_jit, log, "rollout")
        )
        evaluate.run(config, str(tmp_path / "eval"), log=lambda _: None)
        ran = list(log)
        log.clear()

        mesh = sharding.make_mesh()
        replicated = sharding.replicated(mesh)
        tok = tokenizer_lib.load(tiny_model)
        model = params_lib.read_config(
            tiny_model, dtype=config.model.dtype, param_dtype=config.model.param_dtype
        )
        model = model.replace(
            eos_token_ids=tokenizer_lib.merged_eos_ids(model.eos_token_ids, tok)
        )
        params = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
            decoder.abstract_params(model),
        )
        weights = sampling.abstract_weights(model, params, replicated, "cpu")
        calls = {}
        for task in tasks_lib.load_tasks(config):
            settings = build.benchmark_sampling_settings(
                config, task.protocol, model.eos_token_ids, tok.pad_token_id or 0
            )
            prompts = build.benchmark_call_prompts(
                config, task.protocol, len(task.problems)
            )
            shape = engine.rollout_shape(
                prompts,
                config.sampling.prompt_buckets[0],
                settings,
                config.sampling.chunk_rows,
                sharding.batch_divisor(mesh),
            )
            engine.lower_rollout(model, weights, shape, settings, mesh)
            calls[task.benchmark.name] = -(-config.data.limit // prompts)
        planned = list(log)
    finally:
        patcher.undo()

    assert len(planned) == 2
    for plan_call, name in zip(planned, ("math500", "aime24"), strict=True):
        same = [r for r in ran if _same(r[3], plan_call[3])]
        assert len(same) == calls[name], name  # 1 call of 3 greedy; 3 of 1
    assert len(ran) == sum(calls.values())  # and no other program ran


@pytest.mark.slow  # suite time: a run and a plan of its own
def test_the_plan_compiles_the_paged_rollout_the_run_ran(tmp_path, monkeypatch):
    """With a paged KV cache (`rollout.page_size`), the training rollout the
    run ran (`paged_engine`) is the one the plan compiles: same arguments,
    shardings and static sizes (pages, page, slots, devices)."""
    from rlvr_jax.rollout import paged_engine

    config = _config(tmp_path)
    config.eval.every = 0
    config.rollout.page_size = 4
    config.rollout.pages = 6
    log = []
    monkeypatch.setattr(
        paged_engine, "_paged_jit", Spy(paged_engine._paged_jit, log, "paged")
    )
    train.run(config, str(tmp_path / "run"))
    ran = _distinct(list(log), "paged")
    log.clear()
    run = build.plan_run(config, jax.devices(), eval_examples=0)
    programs.compile_programs(run, chips.CHIPS["v5e"], costs=False)
    planned = _distinct(list(log), "paged")
    assert len(ran) == 1 == len(planned)
    assert _same(ran[0][3], planned[0][3]), (ran[0][3][2:], planned[0][3][2:])
    statics = dict(planned[0][3][3])
    assert statics["paging"] == paged_engine.Paging(page=4, pages=6)
    assert statics["shards"] == 8 and statics["slots"] == 8

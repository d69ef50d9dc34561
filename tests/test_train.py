"""The training loop end to end: pulse, learning, resume, preemption, bad input.

Runs go through `python -m rlvr_jax.main` in subprocesses (as a user runs
them), on one CPU device, sharing a persistent compilation cache so that only
the first run pays for compiling.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import io as io_lib

REPO = Path(__file__).resolve().parents[1]
PI1 = str(REPO / "configs" / "pi1.py")
# Wall-clock and throughput figures differ between runs by nature.
VOLATILE = ("time/", "throughput/")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    e["JAX_PLATFORMS"] = "cpu"
    e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla_cache"))
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    e["PYTHONUNBUFFERED"] = "1"
    return e


def main_cmd(workdir, arg="tiny", *overrides):
    return [
        sys.executable,
        "-m",
        "rlvr_jax.main",
        f"--config={PI1}:{arg}",
        f"--workdir={workdir}",
        *overrides,
    ]


def run_main(env, workdir, arg="tiny", *overrides, timeout=600):
    return subprocess.run(
        main_cmd(workdir, arg, *overrides),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stable_rows(workdir):
    rows = io_lib.read_log(os.path.join(workdir, "metrics.jsonl"))
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def assert_same_params(a, b):
    _, pa = ckpt_lib.load_params(a)
    _, pb = ckpt_lib.load_params(b)
    import jax

    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


def test_pulse_writes_metrics_checkpoints_and_hf_export(env, tmp_path):
    wd = tmp_path / "run"
    out = run_main(env, wd, "tiny,steps=3", "--config.log.samples_every=3")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = io_lib.read_log(str(wd / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # Format apart from correctness; read-later samples of the step-3 batch.
    assert all(0 <= r["reward/format_rate"] <= 1 for r in rows[1:])
    samples = io_lib.read_log(str(wd / "samples.jsonl"))
    assert len(samples) == 8 and {s["step"] for s in samples} == {3}
    assert all(s["index"] == 0 and isinstance(s["response"], str) for s in samples)
    assert "eval/builtin/acc" in rows[0] and "eval/builtin/acc" in rows[3]
    # Every response's length, per step: what the planner's --lengths reads.
    lengths = io_lib.read_log(str(wd / "response_lengths.jsonl"))
    assert [r["step"] for r in lengths] == [1, 2, 3]
    for r, m in zip(lengths, rows[1:]):
        assert r["n"] == 8 and len(r["lengths"]) == 8 * 8  # 8 prompts × n
        assert np.mean(r["lengths"]) == m["response_len/mean"]
    # The console: a line per phase, a line per step, a closing summary.
    lines = out.stdout.splitlines()
    assert lines[0].startswith("data: 8 rows of 1 distinct example(s)")
    assert lines[1].startswith("model: random tiny")
    assert [line.split(" |")[0] for line in lines[2:-1]] == [
        f"step {i}/3" for i in range(4)
    ]
    assert lines[-1].startswith("done: step 3 in ") and str(wd) in lines[-1]
    assert json.loads((wd / "run_config.json").read_text())["train"]["steps"] == 3
    for key in (
        "reward/mean",
        "reward/format_rate",
        "loss/kl",
        "loss/entropy",
        "grad_norm",
        "lr",
        "train_acc/0",
    ):
        assert key in rows[1], key
    assert list((wd / "tensorboard").glob("events.out.tfevents.*"))
    assert ckpt_lib.available_steps(str(wd)) == [0, 3]  # keep=2, every=3
    history = json.loads((wd / "accuracy_history.json").read_text())
    assert len(history["0"]) == 3
    assert history["0"] == [r["train_acc/0"] for r in rows[1:]]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = wd / "hf" / "step_3"
    model = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(export))
    ids = tok("What is 3 + 4?", return_tensors="pt").input_ids
    logits = model(ids).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()
    # The export holds the trained policy, i.e. the last checkpoint's params.
    _, params = ckpt_lib.load_params(str(wd), 3)
    emb = np.asarray(params["embed"]["embedding"])
    np.testing.assert_array_equal(model.model.embed_tokens.weight.detach().numpy(), emb)


@pytest.mark.slow  # 20 steps; PPO's twin is in tests/test_ppo_runs.py
def test_it_learns_the_builtin_task_through_the_real_checker(tmp_path):
    """GRPO on one example: mean reward rises from chance to near 1."""
    from rlvr_jax import train

    config = pi1_config("tiny,steps=20")
    train.run(config, str(tmp_path / "learn"))
    rewards = [
        r["reward/mean"]
        for r in io_lib.read_log(str(tmp_path / "learn" / "metrics.jsonl"))
        if "reward/mean" in r
    ]
    assert len(rewards) == 20
    first, last = np.mean(rewards[:4]), np.mean(rewards[-4:])
    assert first < 0.25, rewards
    assert last > 0.6, rewards
    assert last - first > 0.4, rewards


def wait_for_checkpoint(workdir, step, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if step in ckpt_lib.available_steps(str(workdir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint {step} within {timeout}s")


def test_sigkill_then_resume_matches_an_uninterrupted_run(env, tmp_path):
    arg = "tiny,steps=6"
    overrides = ("--config.checkpoint.every=2", "--config.checkpoint.keep=5")
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
    assert max(ckpt_lib.available_steps(str(cut))) < 6
    out = run_main(env, cut, arg, *overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout

    assert stable_rows(cut) == stable_rows(whole)
    assert_same_params(str(cut), str(whole))
    assert json.loads((cut / "accuracy_history.json").read_text()) == json.loads(
        (whole / "accuracy_history.json").read_text()
    )


@pytest.mark.slow  # SIGTERM on 2 processes: test_multihost (slow) too
def test_sigterm_saves_a_checkpoint_that_resumes(env, tmp_path):
    wd = tmp_path / "term"
    proc = subprocess.Popen(
        main_cmd(wd, "tiny,steps=200", "--config.checkpoint.every=100"),
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(wd, 0, proc)
    # Let a couple of steps run, then preempt.
    deadline = time.time() + 300
    while time.time() < deadline:
        rows = io_lib.read_log(str(wd / "metrics.jsonl"))
        if any(r["step"] >= 2 for r in rows):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM: saved step" in stdout
    saved = max(ckpt_lib.available_steps(str(wd)))
    assert 2 <= saved < 100  # a step that is not a regular save point
    rows = io_lib.read_log(str(wd / "metrics.jsonl"))
    assert rows[-1]["step"] == saved

    out = run_main(env, wd, f"tiny,steps={saved + 1}", "--config.checkpoint.every=100")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"at step {saved}" in out.stdout
    rows = io_lib.read_log(str(wd / "metrics.jsonl"))
    assert [r["step"] for r in rows][-2:] == [saved, saved + 1]


def _tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained_workdir(env, tmp_path_factory):
    wd = tmp_path_factory.mktemp("existing")
    out = run_main(env, wd, "tiny,steps=1")
    assert out.returncode == 0, out.stderr[-3000:]
    return wd


def pi1_config(arg: str):
    spec = importlib.util.spec_from_file_location("pi1_config", PI1)
    config_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_module)
    config = config_module.get_config(arg)
    config.log.tensorboard = False
    return config


def _corrupt_checkpoint(tmp_path) -> str:
    corrupt = tmp_path / "corrupt" / "checkpoints" / "5"
    corrupt.mkdir(parents=True)
    (corrupt / "_CHECKPOINT_METADATA").write_text("{not json")
    return str(tmp_path / "corrupt")


# Through the command line: a flag error, and how a bad input reaches the
# console (one `error:` line, exit status 1, no traceback).
@pytest.mark.parametrize(
    "overrides,message",
    [
        (("--config.train.nope=1",), "nope"),
        (
            ("--config.data.train_path=/no/such/file.parquet",),
            "error: data source '/no/such/file.parquet' is not a file or directory",
        ),
    ],
    ids=["unknown_field", "missing_data"],
)
def test_bad_input_fails_clearly_and_leaves_workdir_intact(
    env, trained_workdir, overrides, message
):
    before = _tree_digest(trained_workdir)
    out = run_main(env, trained_workdir, "tiny,steps=2", *overrides)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr or message == "nope"
    assert _tree_digest(trained_workdir) == before


# The other checks, in this process (the 8 devices of conftest split the mesh
# case): `train.run` raises what main.py prints as that `error:` line.
@pytest.mark.parametrize(
    "changes,error,message",
    [
        (
            {"rollout.n": 3, "train.batch_size": 3, "mesh.data": 1, "mesh.fsdp": -1},
            ValueError,
            "do not split over the mesh",
        ),
        ({"rollout.max_new_tokens": 4000}, ValueError, "exceeds the model's context"),
        ({"data.indices": (124,)}, ValueError, "data.train_path is empty"),
        ({"checkpoint.resume_from": "CORRUPT"}, ValueError, "unreadable"),
        ({"train.logits_chunk": 0}, ValueError, "logits_chunk must be positive"),
    ],
    ids=["mesh_split", "context", "indices_without_pool", "bad_checkpoint", "chunk"],
)
def test_bad_config_raises_before_touching_the_workdir(
    trained_workdir, tmp_path, changes, error, message
):
    config = pi1_config("tiny,steps=2")
    for dotted, value in changes.items():
        section, field = dotted.split(".")
        if value == "CORRUPT":
            value = _corrupt_checkpoint(tmp_path)
        config[section][field] = value
    from rlvr_jax import train

    # A new initial checkpoint is a change of the run (refused on resume, as
    # `tests/test_faults.py` checks): it is read for a new workdir.
    workdir = trained_workdir
    if "checkpoint.resume_from" in changes:
        workdir = tmp_path / "new"
    before = _tree_digest(trained_workdir)
    with pytest.raises(error, match=message):
        train.run(config, str(workdir))
    assert _tree_digest(trained_workdir) == before
    assert workdir == trained_workdir or not workdir.exists()


@pytest.mark.slow  # suite time: a run or a compile of its own
def test_pi1_config_with_only_a_model_path_trains_on_the_packaged_pi1(env, tmp_path):
    """The paper's config, unchanged but for sizes a CPU can run in seconds.

    The model is a small random Qwen2 saved with `save_pretrained`, with the
    Qwen-style tokenizer (Qwen2 special tokens, the Qwen2.5-Math chat
    template) saved beside it: the real loading path, the packaged DSR-sub
    pool, π1 (index 124) and the packaged MATH500 validation file.
    """
    from tests import hf_fixtures

    model_dir = hf_fixtures.make_qwen_style_model_dir(tmp_path / "qwen_small")
    wd = tmp_path / "pi1"
    sizes = hf_fixtures.PI1_CPU_SIZES
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlvr_jax.main",
            f"--config={PI1}",
            f"--workdir={wd}",
            f"--config.model.path={model_dir}",
            # The KL reference parked in host memory between its passes.
            "--config.train.reference_on_host=True",
            *(f"--config.{k}={v}" for k, v in sizes.items()),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = io_lib.read_log(str(wd / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1]
    assert "eval/math500/acc" in rows[0]
    assert "train_acc/124" in rows[1]  # π1, from the packaged pool
    # Before any update the policy is the reference: the log-probs of the
    # reference brought back from host memory match the policy's exactly.
    assert rows[1]["loss/kl"] == 0.0
    history = json.loads((wd / "accuracy_history.json").read_text())
    assert list(history) == ["124"]
    assert (wd / "hf" / "step_1" / "model.safetensors").exists()


@pytest.mark.slow  # two runs in this process, ~45 s
def test_reference_kept_in_host_memory_gives_the_same_run(tmp_path, monkeypatch):
    """`train.reference_on_host` parks the KL reference in pinned host memory
    and brings it to the chips for its pass only; nothing else changes."""
    from rlvr_jax import sharding as sharding_lib
    from rlvr_jax import train

    moves = []
    to_memory = sharding_lib.to_memory

    def spy(tree, kind):
        moves.append(kind)
        out = to_memory(tree, kind)
        assert {x.sharding.memory_kind for x in jax.tree.leaves(out)} == {kind}
        return out

    monkeypatch.setattr(sharding_lib, "to_memory", spy)
    rows = {}
    for on_host in (False, True):
        config = pi1_config("tiny,steps=2")
        config.train.reference_on_host = on_host
        train.run(config, str(tmp_path / str(on_host)))
        rows[on_host] = stable_rows(str(tmp_path / str(on_host)))
    assert moves == ["pinned_host", "device", "device"]  # parked, then 2 steps
    assert rows[True] == rows[False]
    kl = [r["loss/kl"] for r in rows[True] if "loss/kl" in r]
    assert len(kl) == 2 and kl[-1] > 0  # the reference was read (after an update)

"""Nothing silently wrong: bad inputs, changed configs on resume and runs
going nowhere, each injected into the tiny π1 run.

Every bad value stops with one line naming the key and the fix before the
workdir is touched; a resume under a config that changes the run is refused
with the differences (and accepted with `resume.allow_changes`), every launch
is kept; a run whose updates are all skipped stops with its last good state
saved. (Checkpoint corruption and I/O failures: tests/test_faults_checkpoint.py;
the checker on huge inputs: tests/test_faults_checker.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rlvr_jax import base_config, build, metrics, train
from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import io as io_lib

REPO = Path(__file__).resolve().parents[1]


def _config(**changes):
    c = base_config.base_config()
    base_config.make_tiny(c)
    c.log.tensorboard = False
    c.train.steps = 1
    c.eval.path = ""  # no evaluation: faster compiles
    c.checkpoint.every = 1
    for dotted, value in changes.items():
        *section, field = dotted.split(".")
        (c[section[0]] if section else c)[field] = value
    return c


def _digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    "changes,message",
    [
        ({"optim.lr": -1e-3}, r"optim.lr=-0.001 must be positive"),
        ({"optim.lr": float("nan")}, r"optim.lr=nan must be positive"),
        ({"checkpoint.every": 0}, r"checkpoint.every=0 must be a positive"),
        ({"model.path": "/nonexistent"}, r"model.preset='tiny' and model.path="),
        ({"eval.every": -1}, r"eval.every=-1"),
        ({"train.max_skipped_updates": 0}, r"train.max_skipped_updates=0"),
        ({"data.train_path": "EMPTY"}, r"empty.jsonl: no examples"),
        ({"data.train_path": "NULL"}, r"null.jsonl:2: the row's answer is empty"),
        ({"data.train_path": "BROKEN"}, r"broken.jsonl:1"),
        ({"eval.path": "EMPTY"}, r"empty.jsonl: no examples"),
    ],
    ids=[
        "negative_lr",
        "nan_lr",
        "checkpoint_every_0",
        "path_and_preset",
        "eval_every",
        "max_skipped",
        "empty_pool",
        "null_answer",
        "malformed_jsonl",
        "empty_eval_set",
    ],
)
def test_a_bad_value_is_one_line_and_the_workdir_is_never_made(
    tmp_path, changes, message
):
    files = {
        "EMPTY": _write(tmp_path / "data" / "empty.jsonl", ""),
        "NULL": _write(
            tmp_path / "data" / "null.jsonl",
            '{"problem": "1 + 1?", "answer": "2"}\n{"problem": "2 + 2?", "answer": null}\n',
        ),
        "BROKEN": _write(tmp_path / "data" / "broken.jsonl", '{"problem": "1 + 1?",\n'),
    }
    changes = {
        k: files.get(v, v) if isinstance(v, str) else v for k, v in changes.items()
    }
    if "data.train_path" in changes:
        changes["data.indices"] = ()
    config = _config(**changes)
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=message) as e:
        train.run(config, str(workdir))
    assert "\n" not in str(e.value)
    assert not workdir.exists()


def test_a_learning_rate_far_above_the_rl_range_is_said():
    assert build.check_config(_config(**{"optim.lr": 1e-6})) == []
    (line,) = build.check_config(_config(**{"optim.lr": 1e6}))
    assert line.startswith("warning: optim.lr=1e+06 is above 0.01")


def _cli(*args, workdir):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rlvr_jax.main",
            f"--config={REPO / 'configs' / 'pi1.py'}:tiny",
            f"--workdir={workdir}",
            *args,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_line_mistakes_are_one_line_without_a_traceback(tmp_path):
    out = _cli("--config.train.stepz=1", workdir=tmp_path / "a")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: --config.train.stepz is not a key of the config; "
        'did you mean "steps" instead of "stepz"?'
    )
    assert "Traceback" not in out.stderr
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    out = _cli(workdir=afile)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: --workdir={afile} is a file, not a directory"
    )
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-step tiny run, a checkpoint a step."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    train.run(_config(**{"train.steps": 2}), str(workdir))
    return workdir


@pytest.mark.slow  # suite time: a run or a compile of its own
def test_a_changed_run_is_refused_with_the_differences(finished):
    before = _digest(finished)
    config = _config(**{"optim.lr": 1.0, "seed": 7, "train.steps": 3})
    with pytest.raises(ValueError) as e:
        train.run(config, str(finished))
    message = str(e.value)
    assert "\n" not in message
    assert "optim.lr: 0.003 -> 1.0" in message and "seed: 0 -> 7" in message
    assert "train.steps" not in message  # extending a run is no change of it
    assert "--config.resume.allow_changes=optim.lr,seed" in message
    assert _digest(finished) == before


@pytest.mark.slow  # suite time: a run or a compile of its own
def test_an_architecture_change_is_named_as_such(finished):
    before = _digest(finished)
    config = _config(
        **{
            "model.preset": "lab",
            "train.steps": 2,
            "resume.allow_changes": "model.preset",
        }
    )
    with pytest.raises(ValueError, match="holds another architecture than this"):
        train.run(config, str(finished))
    assert _digest(finished) == before


@pytest.mark.slow  # a resumed run: ~15 s
def test_an_accepted_change_resumes_and_every_launch_is_kept(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    # A changed seed, accepted; more steps and another cadence need no word.
    config = _config(
        **{
            "train.steps": 3,
            "checkpoint.every": 3,
            "seed": 7,
            "resume.allow_changes": "seed",
        }
    )
    train.run(config, str(workdir))
    launches = io_lib.read_jsonl(workdir / train.LAUNCHES_FILE)
    assert [(r["start_step"], r["config"]["seed"]) for r in launches] == [
        (0, 0),
        (2, 7),
    ]
    # The run's record is its first launch.
    first = json.loads((workdir / io_lib.CONFIG_FILE).read_text())
    assert first["seed"] == 0 and first["train"]["steps"] == 2
    assert max(ckpt_lib.available_steps(str(workdir))) == 3


# ---------------------------------------------------------------- guards
@pytest.mark.slow  # suite time: a run or a compile of its own
def test_a_run_whose_updates_are_all_skipped_stops_with_its_last_good_state(
    tmp_path, capsys
):
    workdir = tmp_path / "run"
    config = _config(
        **{"train.steps": 8, "checkpoint.every": 100, "loss.entropy_coef": float("nan")}
    )
    with pytest.raises(ValueError, match="the last 3 updates .to step 3. were all"):
        train.run(config, str(workdir))
    assert ckpt_lib.available_steps(str(workdir)) == [0, 3]
    _, start = ckpt_lib.load_params(str(workdir / "checkpoints" / "0"))
    _, end = ckpt_lib.load_params(str(workdir / "checkpoints" / "3"))
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(end), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = io_lib.read_log(workdir / io_lib.METRICS_FILE)
    assert [r["skipped_updates"] for r in rows if r["step"]] == [1, 2, 3]
    assert "skipped 3" in capsys.readouterr().out  # the console line shows it


def test_an_update_far_outside_the_runs_history_is_reported():
    lines = []
    guard = train.Guard(3, lines.append)
    for step, ratio in enumerate([1e-3, 1.2e-3, 0.9e-3, 1e-3, 1.1e-3], 1):
        guard.update(step, {"skipped": 0, "grad_norm": 1.0, "update_ratio": ratio})
        assert not guard.outlier and not lines
    guard.update(6, {"skipped": 0, "grad_norm": 1.0, "update_ratio": 0.05})
    assert guard.outlier
    assert lines == [
        "warning: step 6's update moved the weights by 0.05 of their norm, "
        "50x the run's median"
    ]
    guard.update(7, {"skipped": 0, "grad_norm": 1.0, "update_ratio": 1.1e-3})
    assert not guard.outlier
    # Larger than the weights themselves: reported from the first step.
    first = train.Guard(3, lines.append)
    first.update(1, {"skipped": 0, "grad_norm": 1.0, "update_ratio": 3.0})
    assert first.outlier and lines[-1].startswith("warning: step 1's update")
    assert not first.stuck


def test_the_console_line_shows_skipped_updates_only_when_there_are_some(capsys):
    progress = metrics.Progress(10)
    progress.update(1, {"reward/mean": 0.5, "skipped_updates": 0})
    progress.update(2, {"reward/mean": 0.5, "skipped_updates": 2})
    first, second = capsys.readouterr().out.splitlines()
    assert "skipped" not in first and "skipped 2" in second


# ------------------------------------------------------------- full disk
@pytest.mark.slow  # a run, a full disk and a resume: ~25 s
def test_a_full_disk_is_one_line_leaves_no_temporary_file_and_resumes(
    finished, tmp_path, monkeypatch, capsys
):
    """The disk fills while step 1's accuracy history is written (after its
    checkpoint): one `error:` line naming the file, exit status 1, no
    temporary file left; the rerun resumes and ends where an uninterrupted
    run (`finished`) does."""
    import errno

    from etils import epath

    from rlvr_jax import main

    config = _config(**{"train.steps": 2})
    path_type = type(epath.Path(tmp_path))
    original = path_type.write_text
    writes = []

    def full_disk(self, data, *args, **kwargs):
        if io_lib.HISTORY_FILE in self.name:
            writes.append(self.name)
            if len(writes) == 2:  # step 0's, then step 1's
                original(self, data[: len(data) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return original(self, data, *args, **kwargs)

    broken = tmp_path / "broken"
    monkeypatch.setattr(path_type, "write_text", full_disk)
    capsys.readouterr()
    assert main.run_and_report(config, str(broken)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert err[0].endswith(": no space left on device")
    assert io_lib.HISTORY_FILE in err[0]
    assert not [p for p in broken.rglob("*.tmp*") if "orbax" not in p.name]
    monkeypatch.undo()

    assert main.run_and_report(config, str(broken)) == 0
    _, a = ckpt_lib.load_params(str(finished / "checkpoints" / "2"))
    _, b = ckpt_lib.load_params(str(broken / "checkpoints" / "2"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_key_added_after_the_first_launch_is_not_a_change():
    """A run launched before a config key existed resumes under that key's
    default, and only a non-default value counts as a change."""
    from rlvr_jax import base_config, build

    config = base_config.base_config()
    saved = json.loads(config.to_json_best_effort())
    del saved["model"]["tiny_chat"]  # as an older release wrote it
    assert build.config_changes(config, saved) == []
    config.model.tiny_chat = "r1"
    assert build.config_changes(config, saved) == ["model.tiny_chat: '' -> 'r1'"]

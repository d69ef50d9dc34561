"""Damaged checkpoints and failed saves: a resume falls back, a save fails
clearly, nothing is deleted.

A resume (`build.start_state`, through `Checkpointer.restore_verified`) skips
a newest step that is unreadable (flipped bytes, a truncated or deleted
file), whose arrays differ from their saved digests, or that holds a NaN; it
prints one line per skipped step, restores the previous step exactly and
leaves the bad step in place. A step saved before digests existed still
restores. A save that fails (here: a file-size limit, a full disk) raises an
OSError naming the step directory and the cause, and leaves only an orbax
temporary directory, which a resume ignores.

The states are a tiny model's on a (data 2, fsdp 4) mesh of the 8 fake CPU
devices; each test damages its own copy of one saved directory. The end to
end check (a `train.run` resumed past a damaged step) is marked slow.
"""

from __future__ import annotations

import errno
import gc
import os
import re
import shutil
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlvr_jax import build, learner, sharding
from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import io as io_lib
from rlvr_jax.learner import optimizer as optimizer_lib
from rlvr_jax.model import decoder

# A failed orbax restore or save leaves coroutines and callbacks of its event
# loop to be collected later (plain orbax does the same); pytest reports them.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:coroutine .* was never awaited"),
]


@pytest.fixture(autouse=True)
def _collect_orbax_garbage():
    """Collects that garbage after each test, not at a random later moment:
    a collection during pytest's assertion rewriting trips CPython 3.11's
    "AST constructor recursion depth mismatch"."""
    yield
    gc.collect()


MODEL = decoder.ModelConfig.tiny()
TX = optimizer_lib.adamw(1e-3)


def _items(state):
    """(params, train items) as `train.run` saves a state."""
    return state.params, {k: v for k, v in state._asdict().items() if k != "params"}


def _state(mesh, step: int):
    """A distinct, finite state per step: the init plus step / 4 (counters:
    plus step)."""
    state = learner.init_train_state(MODEL, TX, mesh, rng=jax.random.key(0))
    return jax.tree.map(
        lambda x: x + (step if jnp.issubdtype(x.dtype, jnp.integer) else step / 4),
        state,
    )


def _save(directory, states: dict) -> None:
    ckpt = ckpt_lib.Checkpointer(directory, keep=None)
    for step, state in states.items():
        ckpt.save(step, *_items(state), {"step": step})
    ckpt.close()


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(data=2, fsdp=4)


@pytest.fixture(scope="module")
def states(mesh):
    return {0: _state(mesh, 0), 2: _state(mesh, 2)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, states):
    """A checkpoints directory with steps 0 and 2, saved asynchronously."""
    directory = tmp_path_factory.mktemp("template") / "checkpoints"
    _save(str(directory), states)
    return directory


@pytest.fixture
def ckpt_dir(saved, tmp_path) -> Path:
    """This test's own copy of `saved`."""
    directory = tmp_path / "checkpoints"
    shutil.copytree(saved, directory)
    return directory


def _resume(directory, mesh):
    """(state, step, meta) as a run's start finds them."""
    ckpt = ckpt_lib.Checkpointer(str(directory))
    try:
        return build.start_state(ckpt, MODEL, TX, mesh, params=None)
    finally:
        ckpt.close()  # no orbax thread outlives the test


def _assert_same_state(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _data_files(step_dir: Path) -> list[Path]:
    """An item's array data files (orbax's OCDBT chunks), largest first.

    Damage goes into the largest file of `params`: its random values make
    large chunks that a restore reads (a small file may hold only a
    superseded index node, which no restore reads).
    """
    files = [p for p in step_dir.rglob("d/*") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _one_skip_line(out: str, directory: Path, step: int, resumed: int) -> str:
    """The reason of the one line saying `step` was skipped."""
    lines = out.strip().splitlines()
    assert len(lines) == 1, lines
    m = re.fullmatch(
        rf"checkpoint {re.escape(str(directory))}/{step} skipped: (.+); "
        rf"resuming from step {resumed}",
        lines[0],
    )
    assert m, lines[0]
    return m.group(1)


# ----------------------------------------------------------- damaged steps
def test_flipped_bytes_in_the_newest_params_fall_back_to_the_previous_step(
    ckpt_dir, mesh, states, capsys
):
    data = _data_files(ckpt_dir / "2" / "params")[0]
    raw = bytearray(data.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))

    state, step, meta = _resume(ckpt_dir, mesh)
    reason = _one_skip_line(capsys.readouterr().out, ckpt_dir, 2, 0)
    # Which one depends on where the bytes land: in a compressed chunk's
    # framing orbax fails; in its payload it would restore wrong values.
    assert re.match(r"unreadable \(|\d+ arrays? differ from their saved", reason)
    assert (step, meta) == (0, {"step": 0})
    _assert_same_state(state, states[0])
    assert (ckpt_dir / "2").is_dir()  # left in place
    assert ckpt_lib.available_steps(str(ckpt_dir)) == [0, 2]


def test_arrays_that_read_back_fine_but_differ_are_caught_by_the_digests(
    ckpt_dir, mesh, states, capsys
):
    """Step 0's params file set in step 2's place: orbax restores it without
    complaint (the damage is silent); only the digests tell."""
    shutil.rmtree(ckpt_dir / "2" / "params")
    shutil.copytree(ckpt_dir / "0" / "params", ckpt_dir / "2" / "params")
    abstract = learner.sharded_abstract_state(MODEL, TX, mesh)
    ckpt = ckpt_lib.Checkpointer(str(ckpt_dir))
    plain, _, _ = ckpt.restore(2, abstract.params, _items(abstract)[1])
    ckpt.close()
    _assert_same_state(plain, states[0].params)  # silently step 0's values

    state, step, _ = _resume(ckpt_dir, mesh)
    reason = _one_skip_line(capsys.readouterr().out, ckpt_dir, 2, 0)
    assert reason.startswith("14 arrays differ from their saved digests (params[")
    assert reason.endswith(" and 11 more)")
    assert step == 0
    _assert_same_state(state, states[0])


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_truncated_or_deleted_file_falls_back(ckpt_dir, mesh, states, capsys, damage):
    data = _data_files(ckpt_dir / "2" / "params")[0]
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        data.unlink()

    state, step, _ = _resume(ckpt_dir, mesh)
    reason = _one_skip_line(capsys.readouterr().out, ckpt_dir, 2, 0)
    assert reason.startswith("unreadable (") and str(ckpt_dir / "2") in reason
    assert step == 0
    _assert_same_state(state, states[0])
    assert data.parent.is_dir()  # the step is left as it was found


def test_non_finite_values_are_skipped(ckpt_dir, mesh, states, capsys):
    params, train = _items(states[2])
    embed = params["embed"]["embedding"]
    params = {**params, "embed": {"embedding": embed.at[3, 5].set(jnp.nan)}}
    ckpt = ckpt_lib.Checkpointer(str(ckpt_dir), keep=None)
    ckpt.save(4, params, train, {"step": 4})  # the digests match: saved so
    ckpt.close()

    state, step, _ = _resume(ckpt_dir, mesh)
    reason = _one_skip_line(capsys.readouterr().out, ckpt_dir, 4, 2)
    assert reason == "non-finite values in 1 array (params['embed']['embedding'])"
    assert step == 2
    _assert_same_state(state, states[2])


def test_no_intact_step_is_an_error_naming_each_reason(ckpt_dir, mesh, capsys):
    _data_files(ckpt_dir / "2" / "params")[0].unlink()
    shutil.rmtree(ckpt_dir / "0" / "train")
    with pytest.raises(ValueError) as info:
        _resume(ckpt_dir, mesh)
    message = str(info.value)
    assert message.startswith(f"no intact checkpoint in {ckpt_dir} (step 2: unreadable")
    assert "; step 0: unreadable (" in message
    assert capsys.readouterr().out == ""  # the error says it all
    assert sorted(os.listdir(ckpt_dir)) == ["0", "2"]


def test_a_checkpoint_saved_before_digests_restores_unverified(
    tmp_path, mesh, states, capsys
):
    """Written as the Checkpointer did before digests: params, train, meta."""
    directory = tmp_path / "checkpoints"
    manager = ocp.CheckpointManager(str(directory))
    params, train = _items(states[2])
    manager.save(
        2,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train=ocp.args.StandardSave(train),
            meta=ocp.args.JsonSave({"step": 2}),
        ),
    )
    manager.close()

    state, step, meta = _resume(directory, mesh)
    assert capsys.readouterr().out.splitlines() == [
        f"checkpoint {directory}/2 has no digests (saved before checkpoints "
        "carried them): resuming from it unverified"
    ]
    assert (step, meta) == (2, {"step": 2})
    _assert_same_state(state, states[2])


def test_digests_do_not_depend_on_the_mesh(ckpt_dir, states, capsys):
    """Saved on (data 2, fsdp 4), verified on (fsdp 8): a digest describes
    the global array, whatever its sharding."""
    state, step, _ = _resume(ckpt_dir, sharding.make_mesh(data=1, fsdp=8))
    assert step == 2 and capsys.readouterr().out == ""
    _assert_same_state(state, states[2])


def test_a_new_save_of_a_skipped_step_moves_it_aside(ckpt_dir, mesh, states, capsys):
    """A run resumed from step 0 reaches step 2 again: orbax refuses to write
    over a step, so the damaged one is renamed, never deleted."""
    damaged = _data_files(ckpt_dir / "2" / "params")[0]
    damaged.unlink()
    _, step, _ = _resume(ckpt_dir, mesh)
    assert step == 0
    capsys.readouterr()

    ckpt = ckpt_lib.Checkpointer(str(ckpt_dir), keep=None)
    ckpt.save(2, *_items(states[2]), {"step": 2, "again": True})
    ckpt.close()
    (aside,) = [p for p in ckpt_dir.iterdir() if p.name.startswith("2.replaced-")]
    assert (aside / damaged.relative_to(ckpt_dir / "2")).parent.is_dir()
    assert capsys.readouterr().out.strip() == (
        f"checkpoint {ckpt_dir}/2 moved to {aside}: a new step 2 replaces it"
    )
    state, step, meta = _resume(ckpt_dir, mesh)
    assert (step, meta) == (2, {"step": 2, "again": True})
    _assert_same_state(state, states[2])


# ------------------------------------------------------------ failed saves
def test_a_failed_async_save_names_the_step_and_a_resume_ignores_it(
    tmp_path, mesh, states, capsys
):
    """A real OS failure under tensorstore: a file-size limit below the size
    of one array chunk makes the background write fail (EFBIG)."""
    resource = pytest.importorskip("resource")
    directory = tmp_path / "checkpoints"
    ckpt = ckpt_lib.Checkpointer(str(directory), keep=None)
    ckpt.save(0, *_items(states[0]), {"step": 0})
    ckpt.wait()

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(ckpt_lib.CheckpointSaveError) as info:
            ckpt.save(2, *_items(states[2]), {"step": 2})
            ckpt.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    ckpt.close()
    e = info.value
    assert isinstance(e, OSError) and e.errno == errno.EFBIG
    assert str(e).startswith(f"checkpoint {directory}/2 not saved: file too large (")
    assert io_lib.describe_os_error(e) == f"{directory}/2: file too large"

    # Orbax's temporary directory stays; no step lists or restores it.
    assert [p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
    assert ckpt_lib.available_steps(str(directory)) == [0]
    capsys.readouterr()
    state, step, _ = _resume(directory, mesh)
    assert step == 0 and capsys.readouterr().out == ""
    _assert_same_state(state, states[0])
    # The run goes on and saves step 2 over the leftover.
    _save(str(directory), {2: states[2]})
    assert ckpt_lib.available_steps(str(directory)) == [0, 2]


def test_a_full_disk_during_a_save_names_the_step_and_the_cause(
    tmp_path, states, monkeypatch
):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    where = f"{ckpt.directory}/2"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", where + ".tmp/x")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with pytest.raises(ckpt_lib.CheckpointSaveError) as info:
        ckpt.save(2, *_items(states[2]), {"step": 2})
    ckpt.close()
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(
        f"checkpoint {where} not saved: no space left on device (OSError: "
    )
    assert io_lib.describe_os_error(info.value) == f"{where}: no space left on device"


# ------------------------------------------------------------- end to end
@pytest.mark.slow  # two tiny runs compile twice: about a minute on 2 CPU cores
def test_a_run_resumes_past_a_damaged_step_to_the_same_end(tmp_path, capsys):
    """4 steps saving every 2; step 4's params damaged; the rerun resumes from
    step 2 with the one line and ends with the params the run first had."""
    from rlvr_jax import base_config, train

    c = base_config.base_config()
    base_config.make_tiny(c)
    c.log.tensorboard = False
    c.eval.path = ""  # no evaluation: fewer compiles
    c.train.steps, c.checkpoint.every, c.checkpoint.keep = 4, 2, 3
    workdir = tmp_path / "run"
    train.run(c, str(workdir))
    directory = workdir / "checkpoints"
    assert ckpt_lib.available_steps(str(workdir)) == [0, 2, 4]
    _, first = ckpt_lib.load_params(str(directory / "4"))

    _data_files(directory / "4" / "params")[0].unlink()
    capsys.readouterr()
    train.run(c, str(workdir))
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if " skipped: " in line]
    assert line.startswith(f"checkpoint {directory}/4 skipped: unreadable (")
    assert line.endswith("; resuming from step 2")
    assert f"resumed from {directory} at step 2" in out
    _, again = ckpt_lib.load_params(str(directory / "4"))
    _assert_same_state(again, first)
    assert len(list(directory.glob("4.replaced-*"))) == 1  # the damaged step 4

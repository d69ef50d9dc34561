"""Multi-host runs as several local processes: equal to one process, robust.

Each run is `python -m rlvr_jax.main` in 1 or 2 subprocesses joined by
`jax.distributed` on 127.0.0.1 (gloo collectives on CPU), every process with
`--xla_force_host_platform_device_count` devices, so "2 processes × 2
devices" and "1 process × 4 devices" run the same SPMD programs on the same
4-device mesh. Only the collectives differ (gloo across processes versus
in-process), hence the tolerances below. All runs share one persistent
compilation cache; every subprocess has a timeout.

The default suite runs the fast settings checks. Marked slow, because each
adds compiles of its own: the 2-processes-equal-1-process training test
(80–115 s on two cores, nearly all of it compiling: one 2-process and one
1-process run; the largest single test, moved out to keep the default
suite near 15 minutes), the evaluation test (`python -m rlvr_jax.evaluate` on 2
processes × 2 devices against 1 device, ~45 s), the kill tests (~80 s and
~30 s), SIGTERM (~35 s) and the cross-topology resume (~5 min: seven runs
on three topologies).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax import io as io_lib

REPO = Path(__file__).resolve().parents[1]
PI1 = str(REPO / "configs" / "pi1.py")
VOLATILE = ("time/", "throughput/")
# Reduction-order differences of gloo versus in-process all-reduces measured
# at ~1e-7 relative in fp32; the bound is 1e-5.
RTOL = 1e-5
# Options that cut compile time (no eval, no KL reference, sampler log-probs
# as π_old) without leaving any multi-host path: rollouts are still sampled
# on per-process rows and gathered, the learner still all-reduces gradients.
CHEAP = (
    "--config.eval.path=",
    "--config.loss.kl_coef=0",
    "--config.train.recompute_old_logp=False",
)
TIMEOUT_S = 420

# Records every file that a process opens for writing, creates, renames or
# removes under $AUDIT_ROOT, into $AUDIT_LOG (one path per line).
AUDIT_HOOK = textwrap.dedent(
    """
    import os, sys
    _root = os.environ["AUDIT_ROOT"]
    _log = os.environ["AUDIT_LOG"]
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _note(path):
        try:
            path = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return
        if path.startswith(_root):
            with open(_log, "a") as f:
                f.write(path + "\\n")

    def _hook(event, args):
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE:
                _note(args[0])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            _note(args[0])
        elif event == "os.rename":
            _note(args[1])

    sys.addaudithook(_hook)
    """
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache_dir, devices, extra_path=None) -> dict:
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    e["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    e["PYTHONUNBUFFERED"] = "1"
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        e.pop(k, None)
    path = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    e["PYTHONPATH"] = os.pathsep.join(path + [e.get("PYTHONPATH", "")])
    return e


class Run:
    """`processes` processes of `python -m rlvr_jax.main`, started together.

    Process 0 gets the coordinator, process count and id as flags, the others
    as JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
    """

    def __init__(
        self, workdir, arg, overrides, *, processes, devices, cache_dir, audit=None
    ):
        self.workdir = Path(workdir)
        self.logs = [
            self.workdir.parent / f"{self.workdir.name}.p{i}.log"
            for i in range(processes)
        ]
        port = _free_port()
        self.procs = []
        for i in range(processes):
            cmd = [
                sys.executable,
                "-m",
                "rlvr_jax.main",
                f"--config={PI1}:{arg}",
                f"--workdir={workdir}",
                *overrides,
            ]
            env = _env(cache_dir, devices, audit if i and audit else None)
            if processes > 1 and i == 0:
                cmd += [
                    f"--coordinator_address=127.0.0.1:{port}",
                    f"--num_processes={processes}",
                    f"--process_id={i}",
                ]
            elif processes > 1:  # the other way to say the same
                env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
                env["JAX_NUM_PROCESSES"] = str(processes)
                env["JAX_PROCESS_ID"] = str(i)
            if i and audit:
                env["AUDIT_ROOT"] = str(self.workdir)
                env["AUDIT_LOG"] = str(audit / f"p{i}.log")
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=REPO,
                    stdout=open(self.logs[i], "w"),
                    stderr=subprocess.STDOUT,
                )
            )

    def log(self, i) -> str:
        return self.logs[i].read_text()

    def wait(self, timeout=TIMEOUT_S) -> list[int]:
        deadline = time.time() + timeout
        try:
            return [p.wait(timeout=max(1, deadline - time.time())) for p in self.procs]
        finally:
            self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def check(self, timeout=TIMEOUT_S) -> None:
        codes = self.wait(timeout)
        for i, code in enumerate(codes):
            assert code == 0, f"process {i} exited {code}:\n{self.log(i)[-3000:]}"


def run(workdir, arg, *overrides, processes, devices, cache_dir, audit=None):
    r = Run(
        workdir,
        arg,
        overrides,
        processes=processes,
        devices=devices,
        cache_dir=cache_dir,
        audit=audit,
    )
    r.check()
    return r


def rows(workdir):
    return io_lib.read_log(os.path.join(workdir, "metrics.jsonl"))


# Means of differences of log-probs that are equal up to rounding (π_old from
# the sampler versus the learner): ~0 ± fp32 noise of the log-probs, so their
# tolerance is relative to the log-prob scale (the entropy), not to ~0.
CANCELLING = ("loss/ppo_kl",)


def assert_close_rows(a, b, rtol=RTOL, unit_scale=()):
    """Same steps and keys; values equal to `rtol` relative.

    `unit_scale`: keys that are ~0 by construction on a scale of 1 (means of
    whitened advantages, PPO's on-policy policy loss), compared to `rtol`
    absolute.
    """
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        keys = [k for k in x if not k.startswith(VOLATILE)]
        assert keys == [k for k in y if not k.startswith(VOLATILE)]
        for k in keys:
            atol = rtol * abs(y["loss/entropy"]) if k in CANCELLING else 0
            atol = rtol if k in unit_scale else atol
            np.testing.assert_allclose(x[k], y[k], rtol=rtol, atol=atol, err_msg=k)


def assert_close_tensor(x, y, name, rtol=RTOL):
    """‖x − y‖ ≤ rtol·‖y‖ per tensor.

    Per tensor, not per element: Adam divides each gradient by its own √v, so
    an element whose gradient is at the noise level moves by a noise-sized
    but, relative to that element, larger amount (measured: 5e-4 relative on
    a weight near zero, 8.7e-7 absolute, while whole tensors agree to 4e-6).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape, name
    err = np.linalg.norm(x - y)
    assert err <= rtol * np.linalg.norm(y), (name, err / np.linalg.norm(y))


def assert_close_trees(a, b, rtol=RTOL):
    import jax

    la = jax.tree_util.tree_leaves_with_path(a)
    lb = jax.tree.leaves(b)
    assert len(la) == len(lb)
    for (path, x), y in zip(la, lb, strict=True):
        assert_close_tensor(x, y, jax.tree_util.keystr(path), rtol)


def assert_same_checkpoints(a, b, step):
    assert ckpt_lib.available_steps(str(a)) == ckpt_lib.available_steps(str(b))
    _, pa = ckpt_lib.load_params(str(a), step)
    _, pb = ckpt_lib.load_params(str(b), step)
    assert_close_trees(pa, pb)
    ma = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(a)), async_save=False)
    mb = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(b)), async_save=False)
    assert ma.restore_meta(step) == mb.restore_meta(step)


def assert_same_export(a, b, step):
    from safetensors.numpy import load_file

    fa = load_file(str(Path(a) / "hf" / f"step_{step}" / "model.safetensors"))
    fb = load_file(str(Path(b) / "hf" / f"step_{step}" / "model.safetensors"))
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert_close_tensor(fa[k], fb[k], k)


def _files(root: Path) -> list[str]:
    """Workdir files outside checkpoints/ (orbax's layout there is per-process);
    TensorBoard event files without their time stamp and host name."""
    return sorted(
        re.sub(r"tfevents\..*", "tfevents", str(p.relative_to(root)))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != "checkpoints"
    )


# ------------------------------------------------------------ training
@pytest.mark.slow  # 80-115 s: the suite's largest test (see the docstring)
def test_two_processes_equal_one_process_and_only_process_0_writes(cache_dir, tmp_path):
    """2 processes × 2 devices = 1 process × 4 devices: metrics, checkpoints,
    HF export; process 1 writes nothing in the workdir but its checkpoint
    shards."""
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT_HOOK)
    arg = "tiny,steps=2"
    opts = (*CHEAP, "--config.checkpoint.every=1", "--config.checkpoint.keep=5")
    two = tmp_path / "two"
    run(two, arg, *opts, processes=2, devices=2, cache_dir=cache_dir, audit=audit)
    one = tmp_path / "one"
    run(one, arg, *opts, processes=1, devices=4, cache_dir=cache_dir)

    a, b = rows(two), rows(one)
    assert [r["step"] for r in a] == [1, 2]
    assert_close_rows(a, b)
    for step in (0, 1, 2):
        assert_same_checkpoints(two, one, step)
    assert_same_export(two, one, 2)
    assert (two / "accuracy_history.json").read_text() == (
        one / "accuracy_history.json"
    ).read_text()
    assert _files(two) == _files(one)

    written = (
        (audit / "p1.log").read_text().split() if (audit / "p1.log").exists() else []
    )
    outside = {
        p
        for p in written
        if Path(p) != two and Path(p).relative_to(two).parts[0] != "checkpoints"
    }
    assert not outside, sorted(outside)
    # The hook sees process 1's files: it does write its checkpoint shards.
    assert any("checkpoints" in p for p in written)


def _start_evaluation(workdir, model, *, processes, devices, cache_dir, audit=None):
    """`python -m rlvr_jax.evaluate` started on `processes` processes."""
    port = _free_port()
    procs = []
    for i in range(processes):
        cmd = [
            sys.executable,
            "-m",
            "rlvr_jax.evaluate",
            f"--config={REPO / 'configs' / 'eval.py'}:tiny",
            f"--workdir={workdir}",
            f"--config.model.path={model}",
            # Greedy × 1 and T=0.6 × 8; 2 problems do not fill 4 devices, so
            # the padding rows are exercised too.
            "--config.benchmarks=math500,aime24",
            "--config.score.workers=1",
        ]
        env = _env(cache_dir, devices, audit if i and audit else None)
        if processes > 1:
            cmd += [
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}",
                f"--process_id={i}",
            ]
        if i and audit:
            env["AUDIT_ROOT"] = str(workdir)
            env["AUDIT_LOG"] = str(audit / f"p{i}.log")
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _outputs(procs) -> list[str]:
    """Each process's output, once all have exited 0."""
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-3000:]}"
    return outs


# Slow: three evaluate processes (~45 s on two cores); the default suite keeps
# the 2-process training test.
@pytest.mark.slow
def test_multi_host_evaluation_equals_single_device(cache_dir, tiny_model, tmp_path):
    """`python -m rlvr_jax.evaluate` on 2 processes × 2 devices writes the
    records and results of 1 process × 1 device; process 1 writes nothing."""
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT_HOOK)
    two, one = tmp_path / "two", tmp_path / "one"
    # All three processes at once: the runs share nothing but the model.
    procs = _start_evaluation(
        two, tiny_model, processes=2, devices=2, cache_dir=cache_dir, audit=audit
    )
    procs += _start_evaluation(
        one, tiny_model, processes=1, devices=1, cache_dir=cache_dir
    )
    outs = _outputs(procs)

    assert "process 1 of 2: 2 of 4 devices" in outs[1]
    assert "math500" not in outs[1]  # process 0 alone reports
    tag = os.path.basename(tiny_model)
    assert _files(two) == _files(one)
    for name in ("math500", "aime24"):
        path = Path("eval", tag, "generations", f"{name}.jsonl")
        a = io_lib.read_jsonl(str(two / path))
        b = io_lib.read_jsonl(str(one / path))
        assert len(a) == 2 * (8 if name == "aime24" else 1)
        assert a == b, name
        # The comparison has content: responses differ between rows.
        assert len({r["response"] for r in a}) > 1
    results = Path("eval", tag, "results.json")
    assert (two / results).read_text() == (one / results).read_text()
    p1 = audit / "p1.log"
    assert not p1.exists() or not p1.read_text().split()


@pytest.mark.parametrize(
    "flags,env,message",
    [
        (["--num_processes=2"], {}, "needs --coordinator_address"),
        (
            [],
            {
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": "5",
                "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1",
            },
            "outside 0..1",
        ),
    ],
    ids=["no_coordinator", "id_out_of_range"],
)
def test_inconsistent_process_settings_fail_before_any_work(
    cache_dir, tmp_path, flags, env, message
):
    e = dict(_env(cache_dir, 1), **env)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlvr_jax.main",
            f"--config={PI1}:tiny",
            f"--workdir={tmp_path / 'run'}",
            *flags,
        ],
        env=e,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_evaluate_takes_the_same_process_flags(cache_dir, tmp_path):
    """`rlvr_jax.evaluate` shares main's process setup: the same check."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlvr_jax.evaluate",
            f"--config={REPO / 'configs' / 'eval.py'}:tiny",
            f"--workdir={tmp_path / 'eval'}",
            "--num_processes=2",
        ],
        env=_env(cache_dir, 1),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "needs --coordinator_address" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "eval").exists()


# ---------------------------------------------------------------- slow suite
def _wait_for_step(workdir, step, r: Run, timeout=TIMEOUT_S) -> None:
    """Until process 0 has logged `step` (fails if a process ends first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        logged = rows(workdir)
        if logged and logged[-1]["step"] >= step:
            return
        for i, p in enumerate(r.procs):
            if p.poll() is not None:
                raise AssertionError(f"process {i} ended: {r.log(i)[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"step {step} not logged within {timeout}s")


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker_dies", "coordinator_dies"])
def test_a_dead_process_stops_the_other_within_60s(cache_dir, tmp_path, victim):
    """SIGKILL one of two processes mid-run: the survivor exits non-zero
    within 60 s (the 30 s heartbeat) with a message naming the lost one."""
    wd = tmp_path / "run"
    r = Run(wd, "tiny,steps=400", CHEAP, processes=2, devices=2, cache_dir=cache_dir)
    try:
        _wait_for_step(wd, 2, r)
        r.procs[victim].kill()
        t0 = time.time()
        survivor = r.procs[1 - victim]
        try:
            code = survivor.wait(timeout=90)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.time() - t0
    finally:
        r.kill()
    log = r.log(1 - victim)
    print(f"survivor exited {code} after {elapsed:.1f}s")
    assert code not in (None, 0), log[-3000:]
    assert elapsed < 60, elapsed
    # The coordination service's words: "Task 1 heartbeat timeout", or "The
    # following tasks are unhealthy (stopped sending heartbeats):\n1"; a
    # worker that loses process 0 (which hosts the service) says "the leader
    # task was preempted/died ... the leader (usually slice 0 task 0)".
    named = r"([Tt]ask:? 1\b|heartbeats\):\s*1\b)"
    if victim == 0:
        named = r"leader task was preempted/died"
    assert re.search(named, log), log[-3000:]


@pytest.mark.slow
def test_sigterm_on_one_process_saves_the_same_step_on_all(cache_dir, tmp_path):
    wd = tmp_path / "term"
    r = Run(
        wd,
        "tiny,steps=400",
        (*CHEAP, "--config.checkpoint.every=100"),
        processes=2,
        devices=2,
        cache_dir=cache_dir,
    )
    try:
        _wait_for_step(wd, 2, r)
        r.procs[1].send_signal(signal.SIGTERM)  # a preemption notice to one worker
    finally:
        codes = r.wait(timeout=120)
    assert codes == [0, 0], [r.log(i)[-2000:] for i in (0, 1)]
    said = [re.findall(r"SIGTERM: saved step (\d+)", r.log(i)) for i in (0, 1)]
    assert said[0] and said[0] == said[1], said
    saved = int(said[0][0])
    assert 2 <= saved < 100
    assert max(ckpt_lib.available_steps(str(wd))) == saved
    assert rows(wd)[-1]["step"] == saved


@pytest.mark.slow
def test_resume_across_topologies(cache_dir, tmp_path):
    """A 2-process run resumes on 1 process and a 1-process run on 2, each
    continuing as the uninterrupted run does; also onto a smaller mesh (one
    process with 2 devices: orbax reshards the 4-device checkpoint)."""
    opts = (*CHEAP, "--config.checkpoint.every=1", "--config.checkpoint.keep=5")
    whole = tmp_path / "whole"
    run(whole, "tiny,steps=3", *opts, processes=1, devices=4, cache_dir=cache_dir)
    cases = ((2, 4, 1, 4), (1, 4, 2, 4), (2, 4, 1, 2))  # (processes, devices) ×2
    for first, first_devices, then, then_devices in cases:
        wd = tmp_path / f"{first}x{first_devices}to{then}x{then_devices}"
        run(
            wd,
            "tiny,steps=2",
            *opts,
            processes=first,
            devices=first_devices // first,
            cache_dir=cache_dir,
        )
        r = run(
            wd,
            "tiny,steps=3",
            *opts,
            processes=then,
            devices=then_devices // then,
            cache_dir=cache_dir,
        )
        assert "resumed from" in r.log(0) and "at step 2" in r.log(0)
        assert_close_rows(rows(wd), rows(whole))
        assert_same_checkpoints(wd, whole, 3)
        assert_same_export(wd, whole, 3)

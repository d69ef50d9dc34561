"""The TPU pod and GPU cluster launchers, against stand-in gcloud/sbatch/srun.

The stand-ins (written per test into a directory put first on PATH) record
their arguments and act out what the real tools do, on local directories:
`gcloud ... scp --worker=all` copies into one home directory per worker,
`gcloud ... ssh --worker=W --command C` runs C with bash in the chosen
workers' homes, `sbatch` runs the batch script, `srun` runs its command once
per node with SLURM's variables, `scontrol show hostnames` lists the nodes.
The training command is a stand-in Python (the launchers' PYTHON) that
records its arguments and prints a progress line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU_POD = REPO / "launch" / "tpu_pod.sh"
GPU = REPO / "launch" / "gpu.sh"

GCLOUD = """
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
root = os.environ["FAKE_ROOT"]
with open(os.path.join(root, "gcloud.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
verb = args[3]
workers = int(os.environ["FAKE_WORKERS"])
def homes(flag):
    chosen = range(workers) if flag == "all" else [int(flag)]
    return [os.path.join(root, f"worker{i}") for i in chosen]
def option(name):
    return next(a.split("=", 1)[1] for a in args if a.startswith(name + "="))
if verb == "describe":
    states = os.path.join(root, "states")
    lines = open(states).read().split() if os.path.exists(states) else []
    state = lines.pop(0) if lines else "ABSENT"
    open(states, "w").write("\\n".join(lines))
    if state == "ABSENT":
        sys.exit("ERROR: NOT_FOUND")
    print(state)
elif verb == "scp":
    plain = [a for a in args[4:] if not a.startswith("-")]
    plain = [a for a in plain if a not in ("--zone",)]
    sources = [a for a in plain if ":" not in a and os.path.exists(a)]
    for home in homes(option("--worker")):
        os.makedirs(home, exist_ok=True)
        for s in sources:
            dest = os.path.join(home, os.path.basename(s.rstrip("/")))
            if os.path.isdir(s):
                shutil.copytree(s, dest, dirs_exist_ok=True)
            else:
                shutil.copy(s, dest)
elif verb == "ssh":
    command = args[args.index("--command") + 1]
    rc = 0
    for home in homes(option("--worker")):
        os.makedirs(home, exist_ok=True)
        env = dict(os.environ, HOME=home)
        rc = subprocess.run(["bash", "-c", command], env=env, cwd=home).returncode
    sys.exit(rc)
"""

PYTHON = """
import json, os, sys
home = os.environ["HOME"]
if sys.argv[1:3] == ["-m", "pip"]:
    sys.exit(0)
record = {"args": sys.argv[1:], "home": home, "cwd": os.getcwd(),
          "procid": os.environ.get("SLURM_PROCID")}
with open(os.path.join(os.environ["FAKE_ROOT"], "python.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\\n")
runs = os.path.join(home, "runs")
count = int(open(runs).read()) if os.path.exists(runs) else 0
open(runs, "w").write(str(count + 1))
print("step 1/1 | reward 1", flush=True)
sys.exit(1 if count == 0 and os.environ.get("FAKE_FAIL_FIRST") else 0)
"""

SBATCH = """
import json, os, subprocess, sys
root = os.environ["FAKE_ROOT"]
with open(os.path.join(root, "sbatch.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
nodes = int(os.environ["FAKE_WORKERS"])
env = dict(os.environ, SLURM_JOB_NODELIST=f"node[0-{nodes - 1}]",
           SLURM_NNODES=str(nodes))
sys.exit(subprocess.run(["bash", sys.argv[-1]], env=env).returncode)
"""

SRUN = """
import os, subprocess, sys
nodes = int(os.environ["FAKE_WORKERS"])
for i in range(nodes):
    home = os.path.join(os.environ["FAKE_ROOT"], f"node{i}")
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ, SLURM_NTASKS=str(nodes), SLURM_PROCID=str(i),
               SLURM_NODEID=str(i), HOME=home)
    rc = subprocess.run(sys.argv[1:], env=env).returncode
    if rc:
        sys.exit(rc)
"""

SCONTROL = """
import os, sys
assert sys.argv[1:3] == ["show", "hostnames"], sys.argv
for i in range(int(os.environ["FAKE_WORKERS"])):
    print(f"node{i}")
"""


@pytest.fixture
def fake(tmp_path):
    """(environment, root) with the stand-ins first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in [
        ("gcloud", GCLOUD),
        ("fakepython", PYTHON),
        ("sbatch", SBATCH),
        ("srun", SRUN),
        ("scontrol", SCONTROL),
    ]:
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    root = tmp_path / "fake"
    root.mkdir()
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        FAKE_ROOT=str(root),
        PYTHON=str(bin_dir / "fakepython"),
        TPU="pi1-pod",
        ZONE="us-central2-b",
        ACCELERATOR="v4-32",
        WORKDIR="gs://bucket/pi1",
    )
    model = tmp_path / "Qwen-small"
    model.mkdir()
    (model / "config.json").write_text("{}")
    env["MODEL"] = str(model)
    return env, root


def launch(script, env, *args, workers=1):
    env = dict(env, FAKE_WORKERS=str(workers))
    return subprocess.run(
        ["bash", str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def records(root, name):
    path = root / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def verbs(calls):
    return [c[3] for c in calls]


def option(call, name):
    return next(a.split("=", 1)[1] for a in call if a.startswith(name + "="))


@pytest.mark.parametrize("workers", [1, 4, 8])
def test_tpu_pod_creates_copies_runs_on_every_worker_and_streams_worker_0(
    fake, workers
):
    env, root = fake
    out = launch(TPU_POD, env, "run", "--", "--config.train.steps=3", workers=workers)
    assert out.returncode == 0, out.stderr
    calls = records(root, "gcloud")
    assert verbs(calls) == ["describe", "create", "scp", "scp", "ssh", "ssh"]
    create = calls[1]
    assert create[4] == "pi1-pod" and "v4-32" in create and "--spot" not in create
    assert [option(c, "--worker") for c in calls[2:]] == ["all", "all", "all", "0"]
    # Every worker ran the same command, from the code and model copied to it.
    runs = records(root, "python")
    assert sorted(r["home"] for r in runs) == sorted(
        str(root / f"worker{i}") for i in range(workers)
    )
    for r in runs:
        args = r["args"]
        assert (
            args
            == runs[0]["args"][:4]
            + [f"--config.model.path={r['home']}/Qwen-small"]
            + runs[0]["args"][5:]
        )
        assert args[:2] == ["-m", "rlvr_jax.main"]
        assert "--workdir=gs://bucket/pi1" in args
        assert args[-1] == "--config.train.steps=3"
        assert Path(r["cwd"], "rlvr_jax", "main.py").exists()
        assert Path(r["home"], "Qwen-small", "config.json").exists()
    # Worker 0's log streams to the console.
    assert "step 1/1 | reward 1" in out.stdout


def test_tpu_pod_reuses_a_ready_slice_and_starts_a_stopped_one(fake):
    env, root = fake
    (root / "states").write_text("READY\n")
    assert launch(TPU_POD, env, "run").returncode == 0
    assert verbs(records(root, "gcloud")) == ["describe", "scp", "scp", "ssh", "ssh"]
    (root / "gcloud.jsonl").unlink()
    (root / "states").write_text("STOPPED\n")
    assert launch(TPU_POD, env, "run").returncode == 0
    assert verbs(records(root, "gcloud"))[:3] == ["describe", "start", "scp"]


@pytest.mark.parametrize("workers", [1, 4, 8])
def test_tpu_pod_dry_run_prints_and_changes_nothing(fake, workers):
    env, root = fake
    out = launch(TPU_POD, env, "--dry-run", "run", workers=workers)
    assert out.returncode == 0, out.stderr
    assert verbs(records(root, "gcloud")) == ["describe"]  # read-only
    assert not records(root, "python")
    printed = [line for line in out.stdout.splitlines() if line.startswith("gcloud ")]
    assert [line.split()[4] for line in printed] == [
        "create",
        "scp",
        "scp",
        "ssh",
        "ssh",
    ]
    assert "rlvr_jax.main --config=configs/pi1.py --workdir=gs://bucket/pi1" in (
        out.stdout
    )


def test_tpu_pod_spot_slice_restarts_into_the_same_workdir(fake):
    env, root = fake
    env = dict(env, SPOT="1", FAKE_FAIL_FIRST="1")
    # absent at start; preempted when the first run ends and on recreation.
    (root / "states").write_text("ABSENT\nPREEMPTED\nPREEMPTED\n")
    out = launch(TPU_POD, env, "run", workers=4)
    assert out.returncode == 0, out.stderr
    assert "preempted; restart 1 into gs://bucket/pi1" in out.stderr
    calls = records(root, "gcloud")
    assert verbs(calls) == [
        "describe",
        "create",
        "scp",
        "scp",
        "ssh",
        "ssh",
        "describe",
        "describe",
        "delete",
        "create",
        "scp",
        "scp",
        "ssh",
        "ssh",
    ]
    assert all("--spot" in c for c in calls if c[3] == "create")
    runs = records(root, "python")
    assert len(runs) == 8  # 4 workers, twice
    assert len({tuple(r["args"][:3]) for r in runs}) == 1  # same workdir


def test_tpu_pod_a_failed_run_is_not_restarted_unless_preempted(fake):
    env, root = fake
    env = dict(env, SPOT="1", FAKE_FAIL_FIRST="1")
    (root / "states").write_text("READY\nREADY\n")
    out = launch(TPU_POD, env, "run", workers=4)
    assert out.returncode == 1
    assert len(records(root, "python")) == 4


@pytest.mark.parametrize("sub,verb", [("stop", "stop"), ("delete", "delete")])
def test_tpu_pod_stop_and_delete(fake, sub, verb):
    env, root = fake
    out = launch(TPU_POD, env, sub)
    assert out.returncode == 0, out.stderr
    (call,) = records(root, "gcloud")
    assert call[3:5] == [verb, "pi1-pod"] and "us-central2-b" in call
    assert launch(TPU_POD, env, "--dry-run", sub).stdout.startswith(
        f"gcloud compute tpus tpu-vm {verb} pi1-pod"
    )
    assert len(records(root, "gcloud")) == 1


def created_with(root):
    (create,) = [c for c in records(root, "gcloud") if c[3] == "create"]
    return option_value(create, "--accelerator-type"), option_value(create, "--version")


def option_value(call, name):
    return call[call.index(name) + 1]


@pytest.mark.parametrize(
    "accelerator,version",
    [
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_pod_creates_each_generation_with_its_runtime(fake, accelerator, version):
    env, root = fake
    env = dict(env, ACCELERATOR=accelerator)
    env.pop("VERSION", None)
    out = launch(TPU_POD, env, "run", workers=2)
    assert out.returncode == 0, out.stderr
    assert created_with(root) == (accelerator, version)


def test_tpu_pod_version_overrides_the_runtime(fake):
    env, root = fake
    for accelerator in ("v5p-8", "v3-8"):  # known or not, VERSION is used
        env = dict(env, ACCELERATOR=accelerator, VERSION="tpu-vm-tf-2.16.1-pjrt")
        out = launch(TPU_POD, env, "run")
        assert out.returncode == 0, out.stderr
        assert created_with(root) == (accelerator, "tpu-vm-tf-2.16.1-pjrt")
        (root / "gcloud.jsonl").unlink()


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_tpu_pod_unknown_accelerator_needs_a_version(fake, dry):
    env, root = fake
    env = dict(env, ACCELERATOR="v3-8")
    env.pop("VERSION", None)
    out = launch(TPU_POD, env, *dry, "run")
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert "v3-8" in line and "set VERSION" in line
    assert records(root, "gcloud") == []  # stopped before touching anything


def test_gpu_local_runs_one_process_on_all_gpus(fake):
    env, root = fake
    out = launch(GPU, env, "local", "--", "--config.train.steps=3")
    assert out.returncode == 0, out.stderr
    (run,) = records(root, "python")
    assert run["args"][:2] == ["-m", "rlvr_jax.main"]
    assert "--config.mesh.fsdp=-1" in run["args"]
    assert not any(a.startswith("--process_id") for a in run["args"])
    assert run["args"][-1] == "--config.train.steps=3"
    assert launch(GPU, env, "--dry-run", "local").stdout.split()[1:3] == [
        "-m",
        "rlvr_jax.main",
    ]
    assert len(records(root, "python")) == 1


@pytest.mark.parametrize("nodes", [1, 4, 8])
def test_gpu_slurm_one_process_per_node_from_slurm_variables(fake, tmp_path, nodes):
    env, root = fake
    env = dict(env, WORKDIR=str(tmp_path / "runs" / "pi1"), NODES=str(nodes))
    out = launch(GPU, env, "slurm", "--", "--config.train.steps=3", workers=nodes)
    assert out.returncode == 0, out.stderr
    batch = tmp_path / "runs" / "pi1.sbatch"
    assert records(root, "sbatch") == [[str(batch)]]
    text = batch.read_text()
    assert f"#SBATCH --nodes={nodes}\n" in text
    assert "#SBATCH --ntasks-per-node=1\n" in text
    runs = records(root, "python")
    assert [r["procid"] for r in runs] == [str(i) for i in range(nodes)]
    for i, r in enumerate(runs):
        args = r["args"]
        assert args[-3:] == [
            "--coordinator_address=node0:12355",
            f"--num_processes={nodes}",
            f"--process_id={i}",
        ]
        assert args[:-3] == runs[0]["args"][:-3]
        assert f"--workdir={tmp_path / 'runs' / 'pi1'}" in args
        assert "--config.train.steps=3" in args


def test_gpu_slurm_dry_run_prints_the_script_and_submits_nothing(fake, tmp_path):
    env, root = fake
    env = dict(env, WORKDIR=str(tmp_path / "pi1"), NODES="4")
    out = launch(GPU, env, "--dry-run", "slurm", workers=4)
    assert out.returncode == 0, out.stderr
    assert "#   #SBATCH --nodes=4" in out.stdout
    assert out.stdout.splitlines()[-1] == f"sbatch {tmp_path / 'pi1.sbatch'}"
    assert not records(root, "sbatch") and not (tmp_path / "pi1.sbatch").exists()

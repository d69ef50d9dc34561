"""The notebooks, executed top to bottom on their smallest sizes.

Each notebook has a cell tagged `parameters`; the test runs a cell with its
own sizes right after it (the papermill convention), in a fresh IPython
kernel started from notebooks/, as a user in a checkout would run it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, **sizes) -> list[str]:
    """Runs notebook `name` with `sizes` overriding its parameters.

    Returns the text of every output (stream text, plain-text results and
    the MIME type of rich ones), cell by cell.
    """
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (index,) = [
        i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])
    ]
    override = "\n".join(f"{k} = {v!r}" for k, v in sizes.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(override))
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    texts = []
    for cell in nb.cells:
        parts = []
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(out.get("data", {}).get("text/plain", ""))
            parts.extend(k for k in out.get("data", {}) if k != "text/plain")
        texts.append("".join(parts))
    return texts


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """One fake CPU device and a shared compilation cache for the kernels."""
    saved = dict(os.environ)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla"))
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def quickstart_run(kernel_env, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("quickstart") / "run")
    texts = execute("quickstart.ipynb", STEPS=3, WORKDIR=workdir, SAMPLES=4)
    return workdir, texts


def test_quickstart_trains_plots_and_samples(quickstart_run):
    workdir, texts = quickstart_run
    everything = "\n".join(texts)
    assert "step 3/3" in everything  # the run's progress lines reach the notebook
    assert "image/png" in everything  # the curves are displayed
    assert [line for line in everything.splitlines() if line.startswith("step   3")]
    samples = [line for line in everything.splitlines() if line.startswith("reward ")]
    assert len(samples) == 4 and all(s[7] in "01" for s in samples)
    assert os.path.isdir(os.path.join(workdir, "hf", "step_3"))


@pytest.mark.slow  # suite time: a run or a compile of its own
def test_evaluate_sweeps_the_quickstart_run(quickstart_run, tmp_path):
    workdir, _ = quickstart_run
    texts = execute("evaluate.ipynb", RUN=workdir, OUT=str(tmp_path), TINY=True)
    everything = "\n".join(texts)
    for benchmark in ("math500", "aime24", "olympiadbench"):
        assert f"[step_3] {benchmark} (" in everything  # per-benchmark lines
    assert "text/markdown" in everything  # the results table
    assert "image/png" in everything
    assert "'finish_reason'" in everything
    summary = open(os.path.join(workdir, "eval", "summary.md")).read()
    assert "step_0" in summary and "step_3" in summary


@pytest.mark.slow  # ~60-80 s; tests/test_train.py runs the same config by CLI
def test_paper_run_on_a_small_qwen2(kernel_env, tmp_path):
    """The paper's notebook with a small random Qwen2 and CPU sizes."""
    from tests import hf_fixtures

    model = hf_fixtures.make_qwen_style_model_dir(tmp_path / "qwen_small")
    workdir = str(tmp_path / "pi1")
    texts = execute(
        "paper_run.ipynb",
        MODEL=model,
        WORKDIR=workdir,
        OVERRIDES=hf_fixtures.PI1_CPU_SIZES,
        EVAL_ARG="tiny",
    )
    everything = "\n".join(texts)
    assert "step 1/1" in everything
    assert "[step_1] olympiadbench (greedy)" in everything
    assert "text/markdown" in everything and "image/png" in everything
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert "train_acc/124" in rows[-1]  # π1 of the packaged pool


@pytest.mark.slow  # four runs (SFT, full pool, two 1-shot) with their compiles
def test_lab_notebook_runs_sft_rl_selection_and_report(kernel_env, tmp_path):
    texts = execute(
        "lab.ipynb", ROOT=str(tmp_path / "lab"), SFT_STEPS=2, RL_STEPS=2, TINY=True
    )
    everything = "\n".join(texts)
    for shown in ("Compute ", "Solve ", "Count "):  # a problem of each domain
        assert shown in everything
    assert "top example" in everything
    assert "image/png" in everything and "text/markdown" in everything
    assert "| full pool | 1 |" in everything and "| 1-shot top | 1 |" in everything

"""Example selection: historical-variance ranks and the replicated parquet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr_jax.data import paper_data
from rlvr_jax.evaluation import select

DATA = Path(paper_data.__file__).parent  # the packaged data (train/, eval/)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_dir():
    return DATA / "train"


# ------------------------------------------------------------ published ranks
def test_published_ranks_on_the_shipped_history(train_dir):
    ranking = select.rank(select.read_history(str(train_dir / "acc_step_500.json")))
    assert len(ranking) == 1209
    assert select.pick(ranking, [1, 2, 13, 1209]) == [124, 267, 682, 789]
    scores = [s for _, s in ranking]
    assert scores == sorted(scores, reverse=True)
    assert ranking[-1][1] == 0.0  # π1209 has an all-zero history


def test_written_parquet_equals_the_reference_pi1_x128(train_dir, tmp_path):
    ranking = select.rank(select.read_history(str(train_dir / "acc_step_500.json")))
    table = select.replicated_rows(
        str(train_dir / "dsr_sub.parquet"), select.pick(ranking, [1]), 128
    )
    out = tmp_path / "pi1_r128.parquet"
    select.write_parquet(table, str(out))
    ours = pq.read_table(out)
    reference = pq.read_table(train_dir / "pi1_r128.parquet")
    assert ours.num_rows == 128
    assert ours.equals(reference)
    assert ours.to_pylist() == reference.to_pylist()


def test_cli_writes_the_parquet_and_prints_the_ranking(train_dir, tmp_path):
    out = tmp_path / "pi13.parquet"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlvr_jax.evaluation.select",
            f"--history={train_dir / 'acc_step_500.json'}",
            f"--pool={train_dir / 'dsr_sub.parquet'}",
            "--ranks=1,13",
            "--batch_size=4",
            f"--output={out}",
            "--show=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "index  682" in proc.stdout and "<- selected" in proc.stdout
    rows = pq.read_table(out).to_pylist()
    # Pool order (124 before 682), the selection tiled as a block.
    assert [r["extra_info"]["index"] for r in rows] == [124, 682, 124, 682]


def test_cli_bad_input_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlvr_jax.evaluation.select",
            f"--history={tmp_path}/no.json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert f"accuracy history not found: {tmp_path}/no.json" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- synthetic
def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_population_std_and_stable_ties(tmp_path):
    history = {
        "7": [0.0, 1.0],  # std 0.5
        "3": [0.25, 0.75],  # std 0.25
        "5": [1.0, 0.0],  # std 0.5, tied with 7: file order keeps 7 first
        "1": [0.5, 0.5, 0.5],  # std 0
        "2": [],  # no history: 0, after 1 (file order)
    }
    ranking = select.rank(select.read_history(_write(tmp_path / "h.json", history)))
    assert [i for i, _ in ranking] == [7, 5, 3, 1, 2]
    assert [s for _, s in ranking] == [0.5, 0.5, 0.25, 0.0, 0.0]
    # ddof 0: [0, 0, 1] has population std sqrt(2)/3, not the sample std 0.577.
    assert select.variance_scores({"0": [0, 0, 1]})[0] == pytest.approx(
        np.sqrt(2) / 3, abs=1e-12
    )


def test_reads_the_training_loops_history_from_a_workdir(tmp_path):
    _write(tmp_path / select.HISTORY_FILE, {"4": [0.0, 0.5], "9": [1.0, 1.0]})
    history = select.read_history(str(tmp_path))
    assert select.pick(select.rank(history), [1, 2]) == [4, 9]


def test_random_method_is_a_seeded_permutation(tmp_path):
    history = {str(i): [0.0] for i in range(50)}
    a = [i for i, _ in select.rank(history, "random", seed=1)]
    b = [i for i, _ in select.rank(history, "random", seed=1)]
    c = [i for i, _ in select.rank(history, "random", seed=2)]
    assert a == b and a != c and sorted(a) == list(range(50))


def _pool(tmp_path, indices):
    rows = [
        {
            "data_source": "x",
            "prompt": [{"content": f"q{i}", "role": "user"}],
            "ability": "math",
            "reward_model": {"ground_truth": str(i), "style": "rule"},
            "extra_info": {"index": i, "split": "train"},
        }
        for i in indices
    ]
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.mark.parametrize(
    "history, ranks, indices, batch, message",
    [
        (None, [1], [5], 4, "accuracy history not found"),
        ({"1": [0.0]}, [2], [5], 4, "rank 2 is outside 1..1"),
        ({"1": [0.0]}, [1], [1, 2], 4, "not in the pool"),
        ({"5": [0.0], "6": [1.0]}, [1, 2], [5, 6], 3, "not a positive multiple"),
        ({"a": [0.0]}, [1], [5], 4, "is not an example index"),
        ({"1": "oops"}, [1], [5], 4, "not a list of numbers"),
    ],
)
def test_bad_input_names_the_problem(tmp_path, history, ranks, indices, batch, message):
    pool = _pool(tmp_path, [5, 6] if 6 in indices else [5])
    path = str(tmp_path / "missing.json")
    with pytest.raises(select.SelectionError, match=message):
        if history is not None:
            path = _write(tmp_path / "h.json", history)
        chosen = select.pick(select.rank(select.read_history(path)), ranks)
        select.replicated_rows(pool, indices if len(indices) > 1 else chosen, batch)

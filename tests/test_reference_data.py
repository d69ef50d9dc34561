"""Our selection and replication build the reference's training files.

The six replicated sets of the 1-shot RLVR reference (tests/data/
reference_parquet/, README there) against what `build.train_examples` makes
of our configs on the packaged DSR-sub pool: per row, the example index, the
prompt (role and text of each chat message) and the ground truth; the
expected side is read straight from the reference files with pyarrow, not
through our loader.

Row order is checked too, and matches: each file stores one block of copies
per example, in the order of its name, as `examples.replicate` does. Order
is not what a run sees, though: the reference's veRL shuffles each epoch with
its own sampler seed and we shuffle with `seed + epoch`. With 128 rows and a
batch of 128, every step's batch is the whole file, so the multiset of rows
(implied by the equal lists) is what both trainers consume each step.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pyarrow.parquet as pq
import pytest

from rlvr_jax import build

TESTS = pathlib.Path(__file__).resolve().parent
REFERENCE = TESTS / "data" / "reference_parquet"
CONFIGS = TESTS.parent / "configs"

# (our config file, the reference file's stem, the DSR-sub indices it holds)
SETS = [
    ("pi1.py", "pi1_r128", (124,)),
    ("pi2.py", "pi2_r128", (267,)),
    ("pi13.py", "pi13_r128", (682,)),
    ("pi1209.py", "pi1209_r128", (789,)),
    ("pi1_pi13.py", "merge_pi1_pi13_r128", (124, 682)),
    ("four_shot.py", "merge_pi1_pi2_pi13_pi1209_r128", (124, 267, 682, 789)),
]


def _config(name: str):
    spec = importlib.util.spec_from_file_location(f"ref_{name[:-3]}", CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _reference_rows(stem: str) -> list[tuple]:
    """(index, ((role, content), ...), ground truth) per row, in file order."""
    rows = pq.read_table(REFERENCE / f"{stem}.parquet").to_pylist()
    return [
        (
            r["extra_info"]["index"],
            tuple((m["role"], m["content"]) for m in r["prompt"]),
            r["reward_model"]["ground_truth"],
        )
        for r in rows
    ]


@pytest.mark.parametrize("config_name,stem,indices", SETS)
def test_config_builds_the_reference_file_row_for_row(config_name, stem, indices):
    config = _config(config_name)
    assert config.data.train_path == "dsr_sub"
    assert tuple(config.data.indices) == indices
    assert config.data.replicate == 128 == config.train.batch_size
    expected = _reference_rows(stem)
    assert len(expected) == 128
    assert [row[0] for row in expected] == [
        i for i in indices for _ in range(128 // len(indices))
    ]
    ours = [
        (
            ex.index,
            tuple((m["role"], m["content"]) for m in ex.messages),
            ex.ground_truth,
        )
        for ex in build.train_examples(config)
    ]
    assert ours == expected


def test_the_reference_labels_are_the_pools():
    # By hand from the files: π1's famous "12.8" (exact answer ∛2048 ≈ 12.70).
    labels = {row[0]: row[2] for row in _reference_rows(SETS[-1][1])}
    assert labels == {
        124: "12.8",
        267: "24",
        682: "\\frac{4}{3}",
        789: "-\\frac{2023}{2024}",
    }

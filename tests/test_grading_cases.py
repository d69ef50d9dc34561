"""The olympiad-style case table (tests/data/grading_cases.jsonl).

Golds from the packaged benchmarks rewritten the way models write answers:
relations in mixed notation, labelled answers, answer sets over several
boxes, unordered sets, thousands and percent, intervals vs inequalities,
matrices, unboxed answers. Written by tests/data/make_grading_cases.py and
committed; the tests read only the JSONL.
"""

import collections
import json
from pathlib import Path

import pytest

from rlvr_jax.reward import checker

TABLE = Path(__file__).with_name("data") / "grading_cases.jsonl"
ROWS = [json.loads(line) for line in TABLE.open()]
CASES = [pytest.param(row, id=f"{row['category']}-{i}") for i, row in enumerate(ROWS)]


def test_table_has_both_outcomes_in_every_category():
    assert len(ROWS) >= 300
    outcomes = collections.defaultdict(set)
    for row in ROWS:
        outcomes[row["category"]].add(row["expected"])
        assert row["source"] and row["mode"] in checker.MODES
    assert len(outcomes) == 8
    assert all(seen == {True, False} for seen in outcomes.values()), outcomes


@pytest.mark.parametrize("row", CASES)
def test_case(row):
    score, extracted, error = checker.score_item(
        row["response"], row["gold"], row["mode"]
    )
    assert (score == 1.0) is row["expected"], (extracted, row["gold"])
    assert not error

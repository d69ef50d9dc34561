"""Per-category results and format rate: the packaged files' subjects, levels
and subfields, accuracy per category, and well-formed boxes apart from
correctness (no model; records are made by hand or from the packaged files)."""

from __future__ import annotations

import collections

import pytest

from rlvr_jax.data import paper_data
from rlvr_jax.data import suites as benchmarks
from rlvr_jax.evaluation import results as results_lib


def _records(problems, correct) -> list[dict]:
    """One greedy record per problem, right where `correct(problem)`."""
    return [
        {
            "group": p.group,
            "correct": correct(p),
            "length": 10,
            "finish_reason": "stop",
            "response": "",
            **p.categories(),
        }
        for p in problems
    ]


def test_math500_subjects_and_levels_cover_all_500():
    problems = benchmarks.load_jsonl("math500", paper_data.eval_dir())
    recs = _records(problems, lambda p: p.subject == "Geometry")
    by = results_lib.breakdown(recs)
    assert list(by) == ["subject", "level"]
    subjects = {v: c["n_problems"] for v, c in by["subject"].items()}
    assert sum(subjects.values()) == 500
    assert subjects == {
        "Algebra": 124,
        "Counting & Probability": 38,
        "Geometry": 41,
        "Intermediate Algebra": 97,
        "Number Theory": 62,
        "Prealgebra": 82,
        "Precalculus": 56,
    }
    assert by["subject"]["Geometry"]["acc"] == 1.0
    assert all(c["acc"] == 0.0 for v, c in by["subject"].items() if v != "Geometry")
    levels = {v: c["n_problems"] for v, c in by["level"].items()}
    assert levels == {"1": 43, "2": 90, "3": 105, "4": 128, "5": 134}
    # Each level's accuracy is its share of the 41 geometry problems.
    geometry = collections.Counter(p.level for p in problems if p.subject == "Geometry")
    for level, c in by["level"].items():
        assert c["acc"] == pytest.approx(geometry[int(level)] / levels[level])


def test_olympiadbench_subfields_cover_all_675_and_others_have_none():
    eval_dir = paper_data.eval_dir()
    problems = benchmarks.load_jsonl("olympiadbench", eval_dir)
    by = results_lib.breakdown(_records(problems, lambda p: False))
    assert list(by) == ["subfield"]
    assert {v: c["n_problems"] for v, c in by["subfield"].items()} == {
        "Algebra": 264,
        "Combinatorics": 154,
        "Geometry": 129,
        "Number Theory": 128,
    }
    aime = benchmarks.load_jsonl("aime24", eval_dir)
    assert aime[0].categories() == {} and aime[0].subject is None
    assert results_lib.breakdown(_records(aime, lambda p: True)) == {}


def test_breakdown_is_avg_at_k_per_value_with_unknown_last():
    # Four problems, two samples each; problem 3 has no subject.
    rows = [
        (0, "Algebra", 10, [True, False]),
        (1, "Algebra", 2, [True, True]),
        (2, "Geometry", 2, [False, False]),
        (3, None, None, [True, False]),
    ]
    recs = [
        {"group": g, "correct": c, "subject": s, "level": lv}
        for g, s, lv, cs in rows
        for c in cs
    ]
    by = results_lib.breakdown(recs)
    assert by["subject"] == {
        "Algebra": {"n_problems": 2, "acc": 0.75},
        "Geometry": {"n_problems": 1, "acc": 0.0},
        "unknown": {"n_problems": 1, "acc": 0.5},
    }
    assert list(by["level"]) == ["2", "10", "unknown"]  # numeric order
    assert by["level"]["2"] == {"n_problems": 2, "acc": 0.5}


@pytest.mark.parametrize(
    "value, want", [(3, 3), (3.0, 3), ("Level 4", 4), ("2", 2), (None, None)]
)
def test_level_reads_the_files_forms(value, want):
    b = benchmarks.get("math500")
    row = {"subject": " Algebra ", "level": value}
    assert benchmarks.parse_categories(b, row, "f:1") == {
        "subject": "Algebra",
        "level": want,
    }


@pytest.mark.parametrize(
    "row, message",
    [
        ({"level": "hard"}, "f:7: level 'hard' is not an integer"),
        ({"level": True}, "f:7: level True is not an integer"),
        ({"subject": 5}, "f:7: subject 5 is not a non-empty string"),
    ],
)
def test_malformed_category_names_the_line(row, message):
    with pytest.raises(benchmarks.BenchmarkError, match=message):
        benchmarks.parse_categories(benchmarks.get("math500"), row, "f:7")


def test_format_rate_counts_well_formed_boxes_apart_from_correctness():
    # (response, correct as graded): a lenient-graded right answer need not
    # be boxed, and a boxed answer may be wrong.
    cases = [
        ("so \\boxed{5}", True),
        ("so \\boxed{6}", False),  # boxed, wrong
        ("Thus the answer is 5.", True),  # right, no box
        ("so \\boxed{}", False),  # empty box
        ("so \\boxed{5", False),  # never closed
        ("<think>try</think> so \\boxed{5}", True),
        ("<think>\\boxed{5} and on", False),  # thinking never closed
    ]
    recs = [
        {
            "group": i,
            "correct": c,
            "length": 5,
            "finish_reason": "stop",
            "response": text,
        }
        for i, (text, c) in enumerate(cases)
    ]
    plain = results_lib.benchmark_metrics(recs)
    assert plain["format_rate"] == pytest.approx(4 / 7)  # boxes 1, 2, 6, 7
    assert plain["acc"] == pytest.approx(3 / 7)
    # Under the think rule only a box after </think> counts.
    think = results_lib.benchmark_metrics(recs, think=True)
    assert think["format_rate"] == pytest.approx(1 / 7)
    assert plain["breakdown"] == {}


def test_results_table_has_a_section_per_category():
    problems = benchmarks.load_jsonl("math500", paper_data.eval_dir())[:3]
    m = results_lib.benchmark_metrics(_records(problems, lambda p: p.index == 0))
    m.update(protocol="greedy", title="MATH500")
    md = results_lib.markdown(
        {"model": {"tag": "base"}, "benchmarks": {"math500": m}, "average": m["acc"]}
    )
    section = md[md.index("## MATH500 by subject") :]
    assert "| subject | n_problems | avg@1 |" in section
    first = problems[0].subject
    assert f"| {first} | " in section and "## MATH500 by level" in section
    assert sum(c["n_problems"] for c in m["breakdown"]["subject"].values()) == 3

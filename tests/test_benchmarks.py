"""Benchmark loaders, gold answers and the TFDS builder, on the real files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from rlvr_jax.data import paper_data
from rlvr_jax.data import suites as benchmarks


@pytest.fixture(scope="module")
def eval_dir():
    return paper_data.eval_dir()


def _raw(eval_dir, name):
    with open(Path(eval_dir) / name / "test.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------ real files
@pytest.mark.parametrize(
    "name, count",
    [
        ("math500", 500),
        ("aime24", 30),
        ("aime25", 30),
        ("amc23", 40),
        ("minerva_math", 272),
        ("olympiadbench", 675),
    ],
)
def test_counts_and_one_group_per_problem(eval_dir, name, count):
    problems = benchmarks.load_jsonl(name, eval_dir)
    assert len(problems) == count == benchmarks.get(name).count
    assert [p.index for p in problems] == list(range(count))
    assert [p.group for p in problems] == list(range(count))
    assert all(p.problem.strip() and p.gold for p in problems)


@pytest.mark.parametrize("name, base", [("aime24x8", "aime24"), ("amc23x8", "amc23")])
def test_replicated_files_group_eight_rows_per_problem(eval_dir, name, base):
    problems = benchmarks.load_jsonl(name, eval_dir)
    groups = {}
    for p in problems:
        groups.setdefault(p.group, []).append(p)
    assert len(groups) == len(benchmarks.load_jsonl(base, eval_dir))
    assert {len(v) for v in groups.values()} == {8}
    assert all(len({(p.problem, p.gold) for p in v}) == 1 for v in groups.values())


def test_olympiadbench_gold_is_the_first_final_answer_without_dollars(eval_dir):
    problems = benchmarks.load_jsonl("olympiadbench", eval_dir)
    raw = _raw(eval_dir, "olympiadbench")
    assert problems[1].gold == "\\frac{1}{2 n+2}"  # stored as "$\frac{1}{2 n+2}$"
    assert problems[2].gold == "2^{1009}"
    for p, row in zip(problems, raw):
        assert p.gold == row["final_answer"][0].strip("$").strip()
        assert "$" not in p.gold[:1] + p.gold[-1:]
        assert p.problem == row["question"]


def test_math500_gold_is_the_last_box_of_the_solution(eval_dir):
    problems = benchmarks.load_jsonl("math500", eval_dir)
    raw = _raw(eval_dir, "math500")
    assert problems[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    # The dataset's own `answer` column was derived the same way: the two
    # agree up to spacing on every row.
    for p, r in zip(problems, raw):
        assert p.gold.replace(" ", "") == r["answer"].replace(" ", ""), p.index
    # Nested braces survive (brace matching, not a regex up to the first }).
    nested = [p.gold for p in problems if p.gold.count("{") >= 2]
    assert nested and all(g.count("{") == g.count("}") for g in nested)


def test_minerva_gold_is_the_last_box_of_the_solution(eval_dir):
    problems = benchmarks.load_jsonl("minerva_math", eval_dir)
    raw = _raw(eval_dir, "minerva_math")
    for p, row in zip(problems, raw):
        tail = row["solution"][row["solution"].rindex("\\boxed") :]
        assert p.gold in tail
    assert problems[0].problem == raw[0]["problem"]


def test_answer_golds_amc_floats_become_integers(eval_dir):
    amc = benchmarks.load_jsonl("amc23", eval_dir)
    assert [p.gold for p in amc[:4]] == ["27", "36", "45", "3159"]
    aime = benchmarks.load_jsonl("aime24", eval_dir)
    assert [p.gold for p in aime] == [r["answer"] for r in _raw(eval_dir, "aime24")]
    assert aime[0].problem == _raw(eval_dir, "aime24")[0]["question"]
    assert benchmarks.load_jsonl("aime25", eval_dir)[0].gold == "70"


def test_protocols_are_the_papers():
    greedy = {n for n, b in benchmarks.REGISTRY.items() if b.temperature == 0}
    assert greedy == {"math500", "minerva_math", "olympiadbench"}
    for name in ("aime24", "aime25", "amc23"):
        b = benchmarks.get(name)
        assert (b.temperature, b.n_samples, b.protocol) == (0.6, 8, "T=0.6 x 8")
    assert benchmarks.get("math500").protocol == "greedy"


# --------------------------------------------------------------- bad input
def test_unknown_benchmark_names_the_known_ones():
    with pytest.raises(benchmarks.BenchmarkError, match="unknown benchmark 'gsm9k'"):
        benchmarks.parse_spec("math500,gsm9k")
    with pytest.raises(benchmarks.BenchmarkError, match="listed twice"):
        benchmarks.parse_spec("math500,math500")
    assert benchmarks.parse_spec(" math500, aime24=/x/y.jsonl ") == [
        ("math500", None),
        ("aime24", "/x/y.jsonl"),
    ]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(benchmarks.BenchmarkError, match="aime24/test.jsonl"):
        benchmarks.load_jsonl("aime24", str(tmp_path))


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"problem": oops}\n')
    with pytest.raises(benchmarks.BenchmarkError, match=f"{path}:3: malformed JSON"):
        benchmarks.load_jsonl("aime25", str(path))


@pytest.mark.parametrize(
    "name, row, what",
    [
        ("aime25", {"answer": "2"}, "no problem text"),
        ("aime25", {"problem": "1+1?"}, "no gold answer"),
        ("olympiadbench", {"question": "q", "final_answer": []}, "no gold answer"),
        ("math500", {"problem": "q", "solution": "no box here"}, "no gold answer"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, name, row, what):
    path = tmp_path / "t.jsonl"
    good = {"problem": "p", "question": "p", "answer": "1", "solution": "\\boxed{1}"}
    good["final_answer"] = ["1"]
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(
        benchmarks.BenchmarkError, match=f"{path}:2: {name} row has {what}"
    ):
        benchmarks.load_jsonl(name, str(path))


# -------------------------------------------------------------------- TFDS
def test_tfds_builder_round_trip_without_tensorflow(eval_dir, tmp_path):
    tfds_builders = pytest.importorskip("rlvr_jax.data.tfds_builders")
    source = tmp_path / "src"
    for name in ("aime24", "olympiadbench"):
        (source / name).mkdir(parents=True)
        shutil.copy(Path(eval_dir) / name / "test.jsonl", source / name)
    data_dir = str(tmp_path / "tfds")
    for name in ("aime24", "olympiadbench"):
        via_tfds = tfds_builders.load_problems(name, data_dir, str(source))
        via_jsonl = benchmarks.load_jsonl(name, eval_dir)
        assert via_tfds == via_jsonl  # same problems, golds and order
        files = list((tmp_path / "tfds" / "rlvr_eval_math" / name).rglob("*"))
        assert any(".array_record" in f.name for f in files)
    # Prepared once: reading again needs no source at all.
    shutil.rmtree(source)
    rows = tfds_builders.read("aime24", data_dir=data_dir)
    assert len(rows) == 30 and json.loads(rows[0]["row"])["id"] == 60
    assert "tensorflow" not in sys.modules


def test_tfds_missing_source_file_is_a_clear_error(tmp_path):
    tfds_builders = pytest.importorskip("rlvr_jax.data.tfds_builders")
    with pytest.raises(benchmarks.BenchmarkError, match="amc23/test.jsonl"):
        tfds_builders.load_problems("amc23", str(tmp_path / "tfds"), str(tmp_path))


def test_tfds_prepares_from_the_packaged_files_offline(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    import socket

    from rlvr_jax.data import tfds_builders  # registers the builder

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    builder = tfds.builder("rlvr_eval_math/amc23", data_dir=str(tmp_path))
    builder.download_and_prepare()
    via_tfds = tfds_builders.load_problems("amc23", str(tmp_path), None)
    assert via_tfds == benchmarks.load_jsonl("amc23", paper_data.eval_dir())
    assert len(via_tfds) == 40

"""Evaluation: exact aggregation, eval-mode scoring, end-to-end runs and errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax import checkpoint, evaluate, reward
from rlvr_jax import io as io_lib
from rlvr_jax.data import paper_data
from rlvr_jax.data import suites as benchmarks
from rlvr_jax.data import tasks as tasks_lib
from rlvr_jax.evaluation import results as results_lib
from rlvr_jax.evaluation import show
from rlvr_jax.reward import checker

REPO = Path(__file__).resolve().parents[1]
SIX = ("math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench")


def _records(correct_per_group: list[list[bool]]) -> list[dict]:
    return [
        {
            "group": g,
            "correct": c,
            "length": 10,
            "finish_reason": "stop",
            "response": "",
        }
        for g, row in enumerate(correct_per_group)
        for c in row
    ]


# ------------------------------------------------------------ aggregation
def test_avg_at_8_and_pass_at_8_over_replicated_problems():
    # Three problems, eight samples each: 8/8, 3/8 and 0/8 right.
    groups = [[True] * 8, [True] * 3 + [False] * 5, [False] * 8]
    m = results_lib.benchmark_metrics(_records(groups))
    assert m["k"] == 8 and m["n_problems"] == 3 and m["n_generations"] == 24
    assert m["avg@k"] == m["acc"] == pytest.approx((1 + 3 / 8 + 0) / 3)
    assert m["pass@k"] == pytest.approx(2 / 3)


def test_replicated_file_rows_group_into_the_same_avg_at_8():
    # An x8 file lists the whole set 8 times; rows group by problem.
    rows = [("p0", "1"), ("p1", "2"), ("p2", "3")] * 8
    problems = benchmarks.grouped(benchmarks.get("aime24x8"), rows)
    correct = {0: 8, 1: 3, 2: 0}  # right answers per problem
    seen = {0: 0, 1: 0, 2: 0}
    recs = []
    for p in problems:
        recs.append(
            {
                "group": p.group,
                "correct": seen[p.group] < correct[p.group],
                "length": 1,
                "finish_reason": "stop",
                "response": "",
            }
        )
        seen[p.group] += 1
    m = results_lib.benchmark_metrics(recs)
    assert (m["k"], m["n_problems"]) == (8, 3)
    assert m["avg@k"] == pytest.approx((1 + 3 / 8) / 3)
    assert m["pass@k"] == pytest.approx(2 / 3)


def test_greedy_pass_at_1_and_the_six_way_average():
    greedy = results_lib.benchmark_metrics(_records([[True], [False], [True], [False]]))
    assert (greedy["k"], greedy["avg@k"], greedy["pass@k"]) == (1, 0.5, 0.5)
    accs = dict(zip(SIX, [0.736, 0.1, 0.05, 0.45, 0.3, 0.35]))
    per = {n: {"acc": a} for n, a in accs.items()}
    assert results_lib.average(per) == pytest.approx(sum(accs.values()) / 6)


def test_unequal_sample_counts_are_refused():
    with pytest.raises(evaluate.EvalError, match="different sample counts"):
        results_lib.benchmark_metrics(_records([[True] * 8, [True] * 7]))


def test_tables_show_percentages_and_the_average():
    per = {}
    for name, groups in (("math500", [[True], [False]]), ("aime24", [[True] * 8])):
        per[name] = results_lib.benchmark_metrics(_records(groups))
        per[name]["protocol"] = "greedy" if name == "math500" else "T=0.6 x 8"
    results = {
        "model": checkpoint.ModelSource("hf", "/m/base", None).describe(),
        "benchmarks": per,
        "average": results_lib.average(per),
    }
    md = results_lib.markdown(results)
    # The records' responses are empty: no box, format 0 whatever is right.
    assert "| math500 | greedy | 1 | 50.0 | 50.0 | 0.0 | 2 | 10.0 |" in md
    assert "| aime24 | T=0.6 x 8 | 8 | 100.0 | 100.0 | 0.0 | 1 | 10.0 |" in md
    assert "| average | mean of 2 |  | 75.0 |" in md
    assert " by " not in md  # no categories, no per-category tables
    lines = results_lib.csv_text(results).splitlines()
    assert lines[0] == (
        "benchmark,protocol,k,avg@k,pass@k,format_rate,n_problems,mean_len"
    )
    assert lines[-1].startswith("average,mean of 2,,75.0")


def test_reflection_and_length_analysis():
    from rlvr_jax.evaluation import analysis

    texts = ["Let me recheck. Rechecking again.", "I rethink it", "no reflection"]
    stats = analysis.reflection_stats(texts)
    assert stats["reflection/recheck"] == pytest.approx(2 / 3)
    assert stats["reflection/recheck_frac"] == pytest.approx(1 / 3)
    assert stats["reflection/rethink"] == pytest.approx(1 / 3)
    assert stats["reflection/recalculate"] == 0.0
    assert stats["reflection/any_frac"] == pytest.approx(2 / 3)
    lengths = analysis.length_stats([10, 20, 60], [False, False, True])
    assert lengths["response_len/mean"] == 30.0
    assert lengths["response_len/truncated_frac"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------ scoring
def test_eval_mode_scoring_is_lenient():
    pool = reward.RewardPool(workers=1, timeout_s=3.0, mode="eval")
    try:
        recs = [
            {"response": "so \\boxed{12.80}", "gold": "12.8"},
            {"response": "Thus the answer is 27.", "gold": "27"},
            {"response": "we get 3, then 5", "gold": "5"},  # last number
            {"response": "\\boxed{1.33333}", "gold": "\\frac{4}{3}"},  # rel 1e-4
            {"response": "\\boxed{13}", "gold": "12.8"},
            {"response": "no answer at all", "gold": "7"},
        ]
        evaluate.score(pool, recs)
    finally:
        pool.close()
    assert [r["correct"] for r in recs] == [True, True, True, True, False, False]
    assert recs[1]["extracted"] == "27" and recs[2]["extracted"] == "5"


# ----------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def eval_dir():
    return paper_data.eval_dir()


def _config(**overrides):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_cfg", REPO / "configs/eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tiny")
    c.sampling.max_new_tokens = 4
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture(scope="module")
def six_run(tiny_model, eval_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("eval_six"))
    config = _config(**{"model.path": tiny_model, "data.dir": eval_dir})
    logs: list[str] = []
    results = evaluate.run(config, workdir, log=logs.append)
    return config, workdir, results, logs


def test_end_to_end_writes_table_and_generations(six_run, tiny_model, eval_dir):
    from rlvr_jax.data import examples as data
    from rlvr_jax.data import tokenizer

    config, workdir, (results,), logs = six_run
    out = os.path.join(workdir, "eval", os.path.basename(tiny_model))
    for name in ("results.json", "results.md", "results.csv"):
        assert os.path.isfile(os.path.join(out, name))
    assert list(results["benchmarks"]) == list(SIX)
    tok = tokenizer.load(tiny_model)
    for name in SIX:
        recs = io_lib.read_jsonl(os.path.join(out, "generations", f"{name}.jsonl"))
        b = benchmarks.get(name)
        assert len(recs) == 2 * b.n_samples  # limit=2 problems × protocol samples
        problems = benchmarks.load_jsonl(name, config.data.dir)[:2]
        for r in recs:
            p = problems[r["index"]]
            assert r["gold"] == p.gold
            assert r["prompt"] == data.render_prompt(
                tok, [{"role": "user", "content": p.problem}]
            )
            assert r["prompt"].startswith("<|im_start|>system\nPlease reason step")
            assert 1 <= r["length"] <= 4
            assert r["finish_reason"] in ("stop", "length")
            assert set(r) >= {"response", "extracted", "correct"}
            # The problem's categories ride along (MATH500 and OlympiadBench).
            assert {f: r[f] for f in b.categories} == p.categories()
            assert not set(r) & set(benchmarks.CATEGORIES) - set(b.categories)
        m = results["benchmarks"][name]
        assert m["format_rate"] == pytest.approx(
            np.mean([checker.well_formed(r["response"]) for r in recs])
        )
        for field, values in m["breakdown"].items():
            assert sum(c["n_problems"] for c in values.values()) == 2
            for value, c in values.items():
                mine = [
                    g for g in (0, 1) if str(problems[g].categories()[field]) == value
                ]
                assert c["acc"] == pytest.approx(
                    np.mean(
                        [
                            np.mean([r["correct"] for r in recs if r["group"] == g])
                            for g in mine
                        ]
                    )
                )
        assert list(m["breakdown"]) == list(b.categories)
        per_problem = [
            np.mean([r["correct"] for r in recs if r["group"] == g]) for g in (0, 1)
        ]
        assert m["avg@k"] == pytest.approx(np.mean(per_problem))
        assert m["k"] == b.n_samples and m["protocol"] == b.protocol
    # Samples of one problem at T=0.6 differ (independent draws).
    aime = io_lib.read_jsonl(os.path.join(out, "generations", "aime24.jsonl"))
    assert len({r["response"] for r in aime if r["group"] == 0}) > 1
    assert results["average"] == pytest.approx(
        np.mean([m["acc"] for m in results["benchmarks"].values()])
    )
    md = open(os.path.join(out, "results.md")).read()
    table, _, by_category = md.partition("\n## ")
    assert table.count("\n| ") == 8  # header + 6 benchmarks + average
    # Then MATH500 by subject and by level, OlympiadBench by subfield.
    assert re.findall(r"^## (.*)$", "## " + by_category, re.M) == [
        "MATH500 by subject",
        "MATH500 by level",
        "OlympiadBench by subfield",
    ]
    subjects = {p.subject for p in benchmarks.load_jsonl("math500", eval_dir)[:2]}
    assert all(f"| {s} | " in by_category for s in subjects)
    assert sum(" format " in line and "%" in line for line in logs) == 6
    assert os.path.isfile(os.path.join(workdir, "eval", "summary.md"))


def test_rerun_skips_finished_and_resumes_partial(six_run):
    config, workdir, (first,), _ = six_run
    out = os.path.join(workdir, "eval", first["model"]["tag"])
    stamp = os.path.getmtime(os.path.join(out, "results.json"))
    logs: list[str] = []
    (again,) = evaluate.run(config, workdir, log=logs.append)
    assert again == first and any("done already" in line for line in logs)
    assert os.path.getmtime(os.path.join(out, "results.json")) == stamp
    # A crash after some benchmarks: their generations are reused, the model
    # is only loaded for what is missing.
    os.remove(os.path.join(out, "results.json"))
    os.remove(os.path.join(out, "generations", "amc23.settings.json"))
    logs = []
    (resumed,) = evaluate.run(config, workdir, log=logs.append)
    assert sum("reusing" in line for line in logs) == 5
    assert sum("loading" in line for line in logs) == 1
    assert resumed["benchmarks"]["math500"] == first["benchmarks"]["math500"]
    assert resumed["benchmarks"]["amc23"] == first["benchmarks"]["amc23"]  # seeded


def test_reused_generations_without_categories_get_their_problems(eval_dir):
    # Generations saved before records carried categories: filled by index.
    problems = benchmarks.load_jsonl("math500", eval_dir)[:3]
    recs = [{"index": 2}, {"index": 0, "subject": "kept"}]
    evaluate.add_categories(recs, problems)
    assert recs == [
        {"index": 2, "subject": problems[2].subject, "level": problems[2].level},
        {"index": 0, "subject": "kept", "level": problems[0].level},
    ]


# ------------------------------------------------------- reading responses
def test_show_prints_one_problems_responses(six_run):
    _, workdir, (results,), _ = six_run
    tag = results["model"]["tag"]  # the only evaluation: chosen by default
    text = show.show(workdir, "math500", 1)
    recs = io_lib.read_jsonl(
        os.path.join(workdir, "eval", tag, "generations", "math500.jsonl")
    )
    (rec,) = [r for r in recs if r["index"] == 1]
    head = text.splitlines()[0]
    assert head.startswith(f"math500 problem 1 ({tag}; subject {rec['subject']}; ")
    assert f"level {rec['level']}" in head and "1 response(s)" in head
    assert f"gold: {rec['gold']}\n" in text
    assert rec["prompt"] in text and rec["response"] in text
    assert f"extracted {rec['extracted']!r}" in text
    # Every sample of an avg@8 problem, in sample order.
    aime = show.show(workdir, "aime24", 0, tag=tag)
    assert [f"response {i}/8: " in aime for i in range(1, 9)] == [True] * 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(benchmark="aime25x8", problem=0), "no aime25x8 generations for "),
        (dict(benchmark="math500", problem=7), "problem 7 is not in "),
        (dict(benchmark="math500", problem=0, step=5), "step 5 was not evaluated"),
        (dict(benchmark="math500", problem=0, tag="nope"), "no evaluation 'nope'"),
    ],
)
def test_show_names_what_is_missing(six_run, kwargs, message):
    _, workdir, _, _ = six_run
    with pytest.raises(show.ShowError, match=re.escape(message)):
        show.show(workdir, **kwargs)


def test_show_cli_prints_or_ends_on_one_error_line(six_run, tmp_path):
    _, workdir, _, _ = six_run

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "rlvr_jax.evaluation.show", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = run(f"--workdir={workdir}", "--benchmark=olympiadbench", "--problem=0")
    assert ok.returncode == 0, ok.stderr
    assert (
        ok.stdout.startswith("olympiadbench problem 0 (") and "subfield " in ok.stdout
    )
    bad = run(f"--workdir={tmp_path}", "--benchmark=math500", "--problem=0")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip()
        == f"error: no evaluations with generations under {tmp_path}/eval"
    )


def test_sweep_over_step_dirs_then_plots(tiny_model, eval_dir, tmp_path):
    from rlvr_jax.evaluation import plot

    pytest.importorskip("matplotlib")
    for step in (0, 20):
        os.makedirs(tmp_path / "run" / "hf", exist_ok=True)
        os.symlink(tiny_model, tmp_path / "run" / "hf" / f"step_{step}")
    workdir = str(tmp_path / "run")
    config = _config(
        **{
            "model.path": os.path.join(workdir, "hf"),
            "data.dir": eval_dir,
            "benchmarks": "math500,aime24",
        }
    )
    results = evaluate.run(config, workdir, log=lambda _: None)
    assert [r["model"]["step"] for r in results] == [0, 20]
    summary = open(os.path.join(workdir, "eval", "summary.md")).read()
    assert "| step_0 | 0 |" in summary and "| step_20 | 20 |" in summary
    # A sweep that crashed during step 20 redoes only step 20.
    os.remove(os.path.join(workdir, "eval", "step_20", "results.json"))
    logs: list[str] = []
    evaluate.run(config, workdir, log=logs.append)
    assert "[step_0] done already, skipping" in logs
    assert not any("step_20] done" in line for line in logs)
    written = plot.plot_all(workdir)
    assert os.path.join(workdir, "eval_curves.png") in written
    # The cross-category view: MATH500 by subject and level over the steps.
    assert os.path.join(workdir, "eval_subjects.png") in written
    curves = plot.category_series(workdir)
    assert list(curves) == [("math500", "subject"), ("math500", "level")]
    for lines in curves.values():
        assert sum(n for _, _, n in lines.values()) == 2  # tiny: 2 problems
        assert all(steps.tolist() == [0, 20] for steps, _, _ in lines.values())
    md = open(os.path.join(workdir, "eval", "step_20", "results.md")).read()
    assert "## MATH500 by subject" in md and "## AIME24 by" not in md
    # Only step 20 asked for: step 0 is untouched, a missing step is named.
    config.model.steps = "20,40"
    with pytest.raises(evaluate.EvalError, match=r"step\(s\) \[40\] do not exist"):
        evaluate.run(config, workdir, log=lambda _: None)


def test_orbax_checkpoint_matches_the_hf_directory(tiny_model, eval_dir, tmp_path):
    from rlvr_jax import checkpoint
    from rlvr_jax.model import params

    model_config, p = params.load_hf(tiny_model, np.float32, compute_dtype="float32")
    ckpt = checkpoint.Checkpointer(
        checkpoint.checkpoint_dir(str(tmp_path)), async_save=False
    )
    ckpt.save(
        7,
        p,
        {"step": np.int32(7)},
        {"model_config": checkpoint.config_to_meta(model_config)},
    )
    ckpt.close()
    common = {"data.dir": eval_dir, "benchmarks": "math500", "data.limit": 2}
    (via_orbax,) = evaluate.run(
        _config(**{"tokenizer": tiny_model, **common}), str(tmp_path), log=print
    )
    (via_hf,) = evaluate.run(
        _config(**{"model.path": tiny_model, **common}), str(tmp_path), log=print
    )
    assert via_orbax["model"]["tag"] == "step_7"
    read = lambda tag: io_lib.read_jsonl(  # noqa: E731
        os.path.join(tmp_path, "eval", tag, "generations", "math500.jsonl")
    )
    hf_tag = os.path.basename(tiny_model)
    assert [r["response"] for r in read("step_7")] == [
        r["response"] for r in read(hf_tag)
    ]
    with pytest.raises(evaluate.EvalError, match="step"):
        evaluate.run(
            _config(**{"tokenizer": tiny_model, "model.steps": "8", **common}),
            str(tmp_path),
            log=print,
        )


# --------------------------------------------------------------- CLI errors
def _cli(*args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rlvr_jax.evaluate",
            "--config=configs/eval.py:tiny",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_unknown_benchmark(tmp_path):
    proc = _cli(f"--workdir={tmp_path}", "--config.benchmarks=math500,gsm9k")
    assert proc.returncode != 0
    assert "unknown benchmark 'gsm9k'" in proc.stderr
    assert "Traceback" not in proc.stderr


def _cli_error(config, workdir) -> str:
    """The one line `evaluate.cli` ends the program with (the subprocess test
    above shows it reaches stderr without a traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        evaluate.cli(config, str(workdir))
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    return message


def test_cli_missing_benchmark_file(tmp_path):
    message = _cli_error(_config(**{"data.dir": str(tmp_path)}), tmp_path)
    assert f"benchmark file not found: {tmp_path}/math500/test.jsonl" in message


def test_cli_malformed_row(tmp_path):
    bad = tmp_path / "aime25.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    message = _cli_error(_config(benchmarks=f"aime25={bad}"), tmp_path)
    assert f"{bad}:2: aime25 row has no gold answer" in message


def test_cli_missing_step(tiny_model, eval_dir, tmp_path):
    os.makedirs(tmp_path / "hf")
    os.symlink(tiny_model, tmp_path / "hf" / "step_0")
    config = _config(
        **{
            "model.path": str(tmp_path / "hf"),
            "model.steps": "5",
            "data.dir": eval_dir,
        }
    )
    message = _cli_error(config, tmp_path)
    assert "checkpoint step(s) [5] do not exist" in message
    assert "available steps: [0]" in message


def test_tfds_data_format_gives_the_same_tasks(eval_dir, tmp_path):
    pytest.importorskip("rlvr_jax.data.tfds_builders")
    common = {"benchmarks": "aime25,olympiadbench", "data.dir": eval_dir}
    via_jsonl = tasks_lib.load_tasks(_config(**common))
    via_tfds = tasks_lib.load_tasks(
        _config(**common, **{"data.format": "tfds", "data.tfds_dir": str(tmp_path)})
    )
    assert [t.problems for t in via_tfds] == [t.problems for t in via_jsonl]
    assert [len(t.problems) for t in via_tfds] == [2, 2]  # tiny: limit 2
    assert via_tfds[1].problems[0].subfield == "Combinatorics"  # from the raw row
    assert via_tfds[0].data_source == "tfds:aime25"


def test_unknown_template_and_data_format(eval_dir, tmp_path):
    with pytest.raises(evaluate.EvalError, match="template 'chatml'"):
        tasks_lib.load_tasks(_config(**{"template": "chatml", "data.dir": eval_dir}))
    with pytest.raises(evaluate.EvalError, match="data.format='csv'"):
        tasks_lib.load_tasks(_config(**{"data.format": "csv", "data.dir": eval_dir}))


# ------------------------------------------------ per-benchmark protocol
def test_per_benchmark_samples_and_temperatures(eval_dir):
    config = _config(
        **{
            "benchmarks": "math500,aime24,amc23",
            "data.dir": eval_dir,
            "sampling.n": 4,  # the rest: amc23
            "sampling.n_by_benchmark": " math500=16, aime24=64,olympiadbench=2",
            "sampling.temperature_by_benchmark": "math500=0.6",
        }
    )
    protocols = {t.benchmark.name: t.protocol for t in tasks_lib.load_tasks(config)}
    # olympiadbench is named but not run: ignored. The registry's
    # temperatures (math500 greedy, AIME and AMC 0.6) but where overridden.
    assert {k: (p.n, p.temperature) for k, p in protocols.items()} == {
        "math500": (16, 0.6),
        "aime24": (64, 0.6),
        "amc23": (4, 0.6),
    }
    assert protocols["math500"].label == "T=0.6 x 16"


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("sampling.n_by_benchmark", "math500=16,gsm9k=4", "unknown benchmark 'gsm9k'"),
        ("sampling.n_by_benchmark", "math500=0", "must be a positive integer"),
        ("sampling.n_by_benchmark", "math500=2.5", "must be a positive integer"),
        ("sampling.n_by_benchmark", "math500", "'math500' is not name="),
        ("sampling.n_by_benchmark", "aime24=2,aime24=4", "'aime24' is given twice"),
        ("sampling.temperature_by_benchmark", "aime24=-1", "temperature >= 0"),
        ("score.mode", "strict", "score.mode='strict'"),
    ],
)
def test_bad_protocol_spec_fails_before_any_model(eval_dir, key, value, message):
    with pytest.raises(evaluate.EvalError, match=re.escape(message)) as e:
        tasks_lib.load_tasks(_config(**{key: value, "data.dir": eval_dir}))
    assert str(e.value).startswith(key)


def test_two_benchmarks_with_their_own_sample_counts_under_the_think_rule(
    tiny_model, eval_dir, tmp_path
):
    config = _config(
        **{
            "model.path": tiny_model,
            "data.dir": eval_dir,
            "benchmarks": "math500,aime25",
            "sampling.n_by_benchmark": "math500=2,aime25=3",
            "score.mode": "boxed",
            "score.think": True,
        }
    )
    logs: list[str] = []
    (results,) = evaluate.run(config, str(tmp_path), log=logs.append)
    gen_dir = tmp_path / "eval" / os.path.basename(tiny_model) / "generations"
    for name, n, protocol in (("math500", 2, "greedy x 2"), ("aime25", 3, "T=0.6 x 3")):
        recs = io_lib.read_jsonl(str(gen_dir / f"{name}.jsonl"))
        assert len(recs) == 2 * n  # tiny: 2 problems
        for g in (0, 1):
            assert sorted(r["sample"] for r in recs if r["group"] == g) == list(
                range(n)
            )
        m = results["benchmarks"][name]
        assert (m["k"], m["protocol"]) == (n, protocol)
        # A random tiny model never closes a thinking it never began; so
        # under the rule nothing is extracted and every sample scores 0.
        assert not any("</think>" in r["response"] for r in recs)
        assert all(r["extracted"] is None and not r["correct"] for r in recs)
        assert (m["think_closed"], m["avg@k"], m["pass@k"]) == (0.0, 0.0, 0.0)
        saved = results_lib.read_json(str(gen_dir / f"{name}.settings.json"))
        assert saved["n"] == n
        assert saved["score"] == {"mode": "boxed", "think": True}
    assert sum("thinking closed 0.0%" in line for line in logs) == 2


def test_saved_generations_are_reused_only_under_the_rule_that_graded_them(
    eval_dir,
):
    def saved_settings(**score):
        config = _config(**{"benchmarks": "aime25", "data.dir": eval_dir}, **score)
        return tasks_lib.load_tasks(config)[0].settings(config, "m")

    default = saved_settings()
    assert "score" not in default  # as before the rule existed: old runs reuse
    think = saved_settings(**{"score.mode": "boxed", "score.think": True})
    boxed = saved_settings(**{"score.mode": "boxed"})
    assert think["score"] == {"mode": "boxed", "think": True}
    assert len({str(default), str(think), str(boxed)}) == 3


@pytest.mark.slow  # suite time: a run or a compile of its own
def test_cli_console_is_progress_lines_only(tiny_model, tmp_path):
    """Packaged benchmarks by default; orbax's INFO logs stay off the console."""
    from rlvr_jax import checkpoint
    from rlvr_jax.model import params

    model_config, p = params.load_hf(tiny_model, np.float32)
    ckpt = checkpoint.Checkpointer(
        checkpoint.checkpoint_dir(str(tmp_path)), async_save=False
    )
    meta = {"model_config": checkpoint.config_to_meta(model_config)}
    ckpt.save(3, p, {"step": np.int32(3)}, meta)
    ckpt.close()
    proc = _cli(
        f"--workdir={tmp_path}",
        f"--config.tokenizer={tiny_model}",
        "--config.benchmarks=math500",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[step_3] math500 (greedy): avg@1" in proc.stdout
    # absl's INFO prefix (I + month/day), which orbax restores emit by the dozen.
    noisy = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if re.match(r"I\d{4} ", line) or "INFO" in line
    ]
    assert noisy == []

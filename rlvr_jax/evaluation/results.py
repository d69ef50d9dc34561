"""Evaluation results: per-benchmark metrics, the paper's table, result files.

Turns the generation records of `rlvr_jax.evaluate` into avg@k / pass@k per
benchmark and the plain 6-way average, renders them as markdown and CSV, and
reads/writes the per-model `results.json` and the sweep summary atomically.

Format is reported apart from correctness: `format_rate` is the fraction of
responses with a well-formed final box, so a checkpoint that stops boxing
shows as such rather than only as lower accuracy. Benchmarks whose problems
carry categories (MATH500's subject and level, OlympiadBench's subfield;
`rlvr_jax.data.suites.CATEGORIES`) are also broken down by them, with the
benchmark's own metric (avg@k), for the paper's cross-category view.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlvr_jax import io as io_lib
from rlvr_jax.data import suites
from rlvr_jax.data.tasks import EvalError
from rlvr_jax.evaluation import analysis
from rlvr_jax.reward import checker

SUMMARY_STEM = "summary"


# ============================================================== aggregation
def _by_problem(records: Sequence[dict]) -> dict[int, list[bool]]:
    groups: dict[int, list[bool]] = {}
    for r in records:
        groups.setdefault(int(r["group"]), []).append(bool(r["correct"]))
    return groups


def _category_order(key: str) -> tuple:
    # Levels "1".."10" in numeric order; names alphabetically; "unknown" last.
    return (key == "unknown", not key.isdigit(), int(key) if key.isdigit() else 0, key)


def breakdown(records: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """Accuracy per category value, for each category the records carry.

    Args:
      records: generation records with `group`, `correct` and, where the
        benchmark has them, category fields (`suites.CATEGORIES`).

    Returns:
      {field: {value: {"n_problems", "acc"}}} for each field of
      `suites.CATEGORIES` that some record has a value for; `acc` is the mean
      over the value's problems of their fraction right (avg@k, as the
      benchmark's headline). Values are strings (level 3 is "3": JSON keys),
      in order; problems without a value count under "unknown", so the
      `n_problems` of a field sum to the benchmark's. {} when none.
    """
    per_problem = {g: float(np.mean(v)) for g, v in _by_problem(records).items()}
    out: dict[str, dict[str, dict]] = {}
    for field in suites.CATEGORIES:
        value_of: dict[int, str] = {}
        for r in records:
            v = r.get(field)
            value_of.setdefault(int(r["group"]), "unknown" if v is None else str(v))
        if set(value_of.values()) <= {"unknown"}:
            continue
        members: dict[str, list[float]] = {}
        for g, v in value_of.items():
            members.setdefault(v, []).append(per_problem[g])
        out[field] = {
            v: {"n_problems": len(members[v]), "acc": float(np.mean(members[v]))}
            for v in sorted(members, key=_category_order)
        }
    return out


def benchmark_metrics(
    records: Sequence[dict],
    words: Sequence[str] = analysis.REFLECTION_WORDS,
    think: bool = False,
) -> dict[str, Any]:
    """Accuracy, format, length and reflection metrics of one benchmark's
    generations.

    Args:
      records: generation records with `group` (the problem), `correct`,
        `length`, `finish_reason`, `response` and any category fields.
      words: reflection words to count.
      think: the run's think rule (`score.think`), for `format_rate`:
        only a box after `</think>` counts.

    Returns:
      `acc` (= avg@k, the headline), `avg@k`, `pass@k`, `k` (samples per
      problem), `n_problems`, `n_generations`, `format_rate` (fraction of
      responses with a well-formed final box, right or wrong:
      `checker.well_formed`), `breakdown` (accuracy per category value, see
      `breakdown`; {} for a benchmark without categories), plus `analysis`
      statistics.

    Raises:
      EvalError: no records, or problems with different sample counts (avg@k
        would weight them unequally).
    """
    if not records:
        raise EvalError("no generations to aggregate")
    groups = _by_problem(records)
    counts = {len(v) for v in groups.values()}
    if len(counts) != 1:
        raise EvalError(f"problems have different sample counts {sorted(counts)}")
    per_problem = np.array([np.mean(v) for v in groups.values()])
    any_right = np.array([any(v) for v in groups.values()])
    stats = analysis.length_stats(
        [r["length"] for r in records],
        [r["finish_reason"] == "length" for r in records],
    )
    responses = [r["response"] for r in records]
    stats.update(analysis.reflection_stats(responses, words))
    return {
        "acc": float(per_problem.mean()),
        "avg@k": float(per_problem.mean()),
        "pass@k": float(any_right.mean()),
        "k": counts.pop(),
        "n_problems": len(groups),
        "n_generations": len(records),
        "format_rate": float(
            np.mean([checker.well_formed(r, think=think) for r in responses])
        ),
        "breakdown": breakdown(records),
        "analysis": stats,
    }


def average(per_benchmark: dict[str, dict]) -> float:
    """The plain mean of the benchmarks' headline accuracies."""
    return float(np.mean([m["acc"] for m in per_benchmark.values()]))


# ================================================================== tables
_COLUMNS = (
    "benchmark",
    "protocol",
    "k",
    "avg@k",
    "pass@k",
    "format_rate",
    "n_problems",
    "mean_len",
)


def _percent(x: float | None) -> float | str:
    # results.json written before a metric existed lacks it: an empty cell.
    return "" if x is None else round(100 * x, 2)


def table_rows(results: dict) -> list[dict]:
    """One row per benchmark and a final "average" row, accuracies in %."""
    rows = []
    for name, m in results["benchmarks"].items():
        rows.append(
            {
                "benchmark": name,
                "protocol": m["protocol"],
                "k": m["k"],
                "avg@k": _percent(m["avg@k"]),
                "pass@k": _percent(m["pass@k"]),
                "format_rate": _percent(m.get("format_rate")),
                "n_problems": m["n_problems"],
                "mean_len": round(m["analysis"]["response_len/mean"], 1),
            }
        )
    rows.append(
        {
            "benchmark": "average",
            "protocol": f"mean of {len(results['benchmarks'])}",
            "k": "",
            "avg@k": _percent(results["average"]),
            "pass@k": "",
            "format_rate": "",
            "n_problems": "",
            "mean_len": "",
        }
    )
    return rows


def breakdown_markdown(results: dict) -> str:
    """One markdown table per (benchmark, category): MATH500 by subject and
    by level, OlympiadBench by subfield; "" when no benchmark has any."""
    lines: list[str] = []
    for name, m in results["benchmarks"].items():
        title = m.get("title", name)
        for field, values in m.get("breakdown", {}).items():
            metric = f"avg@{m['k']}"
            lines += [
                "",
                f"## {title} by {field}",
                "",
                f"| {field} | n_problems | {metric} |",
                "|---|---|---|",
            ]
            lines += [
                f"| {v} | {c['n_problems']} | {_percent(c['acc'])} |"
                for v, c in values.items()
            ]
    return "\n".join(lines) + "\n" if lines else ""


def markdown(results: dict) -> str:
    """The results table of one model as GitHub markdown, then the
    per-category tables (`breakdown_markdown`)."""
    title = results["model"]["tag"]
    lines = [
        f"# {title}",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---" for _ in _COLUMNS) + "|",
    ]
    for row in table_rows(results):
        lines.append("| " + " | ".join(str(row[c]) for c in _COLUMNS) + " |")
    lines += [
        "",
        "Accuracies in %; avg@k is the headline number (avg@1 = pass@1); "
        "format_rate is the % of responses with a well-formed final \\boxed{}, "
        "right or wrong.",
    ]
    return "\n".join(lines) + "\n" + breakdown_markdown(results)


def csv_text(results: dict) -> str:
    """The results table of one model as CSV."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table_rows(results))
    return out.getvalue()


def summary_tables(all_results: Sequence[dict]) -> tuple[str, str]:
    """(markdown, csv) with one row per model and a column per benchmark (%)."""
    names: list[str] = []
    for r in all_results:
        names += [n for n in r["benchmarks"] if n not in names]
    header = ["model", "step", *names, "average"]
    rows = []
    for r in all_results:
        step = r["model"]["step"]
        row = {"model": r["model"]["tag"], "step": "" if step is None else step}
        for n in names:
            m = r["benchmarks"].get(n)
            row[n] = "" if m is None else round(100 * m["acc"], 2)
        row["average"] = round(100 * r["average"], 2)
        rows.append(row)
    md = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return "\n".join(md) + "\n", out.getvalue()


# ================================================================== file I/O
def read_json(path: str) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def finished(out_dir: str, model: str, settings: dict) -> dict | None:
    """The results.json in `out_dir` when it was written for `model` under
    `settings` (that model is done), else None."""
    r = read_json(os.path.join(out_dir, io_lib.RESULTS_FILE))
    done = (
        isinstance(r, dict)
        and r.get("model") == model
        and r.get("settings") == settings
    )
    return r if done else None


def write_results(out_dir: str, results: dict) -> None:
    """results.md and results.csv, then results.json (the "done" marker)."""
    io_lib.write_atomic(os.path.join(out_dir, "results.md"), markdown(results))
    io_lib.write_atomic(os.path.join(out_dir, "results.csv"), csv_text(results))
    io_lib.write_atomic(
        os.path.join(out_dir, io_lib.RESULTS_FILE), json.dumps(results, indent=2) + "\n"
    )


def collect_results(workdir: str) -> list[dict]:
    """Every finished evaluation under `<workdir>/eval/`, by step then tag."""
    root = os.path.join(workdir, io_lib.EVAL_DIR)
    found = []
    if os.path.isdir(root):
        for tag in os.listdir(root):
            r = read_json(os.path.join(root, tag, io_lib.RESULTS_FILE))
            if isinstance(r, dict) and "benchmarks" in r:
                found.append(r)
    big = float("inf")
    return sorted(
        found,
        key=lambda r: (
            big if r["model"]["step"] is None else r["model"]["step"],
            r["model"]["tag"],
        ),
    )


def write_summary(workdir: str) -> list[dict]:
    """`<workdir>/eval/summary.{json,md,csv}` over all finished evaluations."""
    all_results = collect_results(workdir)
    if not all_results:
        return []
    md, csv_str = summary_tables(all_results)
    root = os.path.join(workdir, io_lib.EVAL_DIR)
    io_lib.write_atomic(os.path.join(root, f"{SUMMARY_STEM}.md"), md)
    io_lib.write_atomic(os.path.join(root, f"{SUMMARY_STEM}.csv"), csv_str)
    # The summary drops settings; each model's results.json keeps them.
    compact = [
        {"model": r["model"], "average": r["average"], "benchmarks": r["benchmarks"]}
        for r in all_results
    ]
    io_lib.write_atomic(
        os.path.join(root, f"{SUMMARY_STEM}.json"), json.dumps(compact, indent=2) + "\n"
    )
    return all_results

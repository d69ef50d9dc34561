"""Evaluation results: per-benchmark metrics, the paper's table, result files.

Turns the generation records of `rlvr_jax.evaluate` into avg@k / pass@k per
benchmark and the plain 6-way average, renders them as markdown and CSV, and
reads/writes the per-model `results.json` and the sweep summary atomically.
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
from rlvr_jax.data.tasks import EvalError
from rlvr_jax.evaluation import analysis

SUMMARY_STEM = "summary"


# ============================================================== aggregation
def benchmark_metrics(
    records: Sequence[dict], words: Sequence[str] = analysis.REFLECTION_WORDS
) -> dict[str, Any]:
    """Accuracy, length and reflection metrics of one benchmark's generations.

    Args:
      records: generation records with `group` (the problem), `correct`,
        `length`, `finish_reason` and `response`.
      words: reflection words to count.

    Returns:
      `acc` (= avg@k, the headline), `avg@k`, `pass@k`, `k` (samples per
      problem), `n_problems`, `n_generations`, plus `analysis` statistics.

    Raises:
      EvalError: no records, or problems with different sample counts (avg@k
        would weight them unequally).
    """
    if not records:
        raise EvalError("no generations to aggregate")
    groups: dict[int, list[bool]] = {}
    for r in records:
        groups.setdefault(int(r["group"]), []).append(bool(r["correct"]))
    counts = {len(v) for v in groups.values()}
    if len(counts) != 1:
        raise EvalError(f"problems have different sample counts {sorted(counts)}")
    per_problem = np.array([np.mean(v) for v in groups.values()])
    any_right = np.array([any(v) for v in groups.values()])
    stats = analysis.length_stats(
        [r["length"] for r in records],
        [r["finish_reason"] == "length" for r in records],
    )
    stats.update(analysis.reflection_stats([r["response"] for r in records], words))
    return {
        "acc": float(per_problem.mean()),
        "avg@k": float(per_problem.mean()),
        "pass@k": float(any_right.mean()),
        "k": counts.pop(),
        "n_problems": len(groups),
        "n_generations": len(records),
        "analysis": stats,
    }


def average(per_benchmark: dict[str, dict]) -> float:
    """The plain mean of the benchmarks' headline accuracies."""
    return float(np.mean([m["acc"] for m in per_benchmark.values()]))


# ================================================================== tables
_COLUMNS = ("benchmark", "protocol", "k", "avg@k", "pass@k", "n_problems", "mean_len")


def table_rows(results: dict) -> list[dict]:
    """One row per benchmark and a final "average" row, accuracies in %."""
    rows = []
    for name, m in results["benchmarks"].items():
        rows.append(
            {
                "benchmark": name,
                "protocol": m["protocol"],
                "k": m["k"],
                "avg@k": round(100 * m["avg@k"], 2),
                "pass@k": round(100 * m["pass@k"], 2),
                "n_problems": m["n_problems"],
                "mean_len": round(m["analysis"]["response_len/mean"], 1),
            }
        )
    rows.append(
        {
            "benchmark": "average",
            "protocol": f"mean of {len(results['benchmarks'])}",
            "k": "",
            "avg@k": round(100 * results["average"], 2),
            "pass@k": "",
            "n_problems": "",
            "mean_len": "",
        }
    )
    return rows


def markdown(results: dict) -> str:
    """The results table of one model as GitHub markdown."""
    title = results["model"]["tag"]
    lines = [
        f"# {title}",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---" for _ in _COLUMNS) + "|",
    ]
    for row in table_rows(results):
        lines.append("| " + " | ".join(str(row[c]) for c in _COLUMNS) + " |")
    lines += ["", "Accuracies in %; avg@k is the headline number (avg@1 = pass@1)."]
    return "\n".join(lines) + "\n"


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

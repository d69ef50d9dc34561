"""Our answer checker vs Hugging Face math-verify, on real benchmark answers.

math-verify is the comparison baseline, not a dependency of rlvr_jax: install
it in the benchmark's environment only (it pins its own antlr runtime, so a
virtual environment keeps it away from anything else):

    python -m venv --system-site-packages /tmp/mv && /tmp/mv/bin/pip install math-verify==0.9.0
    /tmp/mv/bin/python benchmarks/checker.py            # the packaged data
    python benchmarks/checker.py --data DIR             # ours only without math-verify

Four sets, every item graded by both checkers in this process:

  reference   gold = the dataset answer; pred = the reference solution text
              where the dataset has one (MATH500, Minerva, AIME24), else the
              answer restated in a box (AIME25, AMC23 vs their float answer,
              OlympiadBench without its `$`). Both should accept.
  rewrites    equivalent reformulations generated from each gold (\\dfrac,
              x = ..., \\left( \\right), a reordered list of answers, 0.50).
              Both should accept.
  perturbed   wrong answers generated from each gold (first digit changed,
              tuple elements swapped, interval bracket flipped, a list with an
              answer dropped). Both should reject: an acceptance is a false
              positive.
  table       the hand-written cases of tests/checker_cases.py (labels are the
              intended truth; our checker was developed against them, so
              this set shows math-verify's behaviour more than ours).
  olympiad    the olympiad-style table, tests/data/grading_cases.jsonl:
              benchmark golds rewritten as models write them (relations,
              labelled answers, answer sets over boxes, sets, thousands and
              percent, intervals, matrices, unboxed answers), whole responses,
              graded in each case's mode; per-category accuracy is printed.

Printed: per set, accuracy of each checker, agreement between them, the
disagreements (listed; --show N caps the list), and throughput (answers/s,
one process, parse caches cleared before each set).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rlvr_jax import reward  # noqa: E402
from rlvr_jax.data import paper_data  # noqa: E402
from rlvr_jax.reward import checker  # noqa: E402
from tests.checker_cases import EQUIVALENCE  # noqa: E402

GRADING_TABLE = REPO / "tests" / "data" / "grading_cases.jsonl"

try:
    import math_verify
except ImportError:  # the comparison is optional
    math_verify = None


# ------------------------------------------------------------------ data
def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.open()]


def _strip_dollars(s: str) -> str:
    return s.strip().strip("$").strip()


def reference_items(data: Path) -> list[tuple[str, str, str, bool]]:
    """(source, pred text, gold, expected) with the reference answers."""
    ev = data / "eval"
    items = []
    for r in _jsonl(ev / "math500" / "test.jsonl"):
        items.append(("math500", r["solution"], r["answer"], True))
    for r in _jsonl(ev / "minerva_math" / "test.jsonl"):
        gold = checker.last_box(r["solution"])
        if gold is not None:
            items.append(("minerva", r["solution"], gold, True))
    for r in _jsonl(ev / "aime24" / "test.jsonl"):
        items.append(("aime24", r["solution"], str(r["answer"]), True))
    for r in _jsonl(ev / "aime25" / "test.jsonl"):
        items.append(("aime25", f"\\boxed{{{r['answer']}}}", str(r["answer"]), True))
    for r in _jsonl(ev / "amc23" / "test.jsonl"):
        answer = r["answer"]
        shown = int(answer) if float(answer).is_integer() else answer
        items.append(("amc23", f"\\boxed{{{shown}}}", repr(answer), True))
    for r in _jsonl(ev / "olympiadbench" / "test.jsonl"):
        gold = r["final_answer"][0]
        items.append(("olympiad", f"\\boxed{{{_strip_dollars(gold)}}}", gold, True))
    return items


def _golds(data: Path) -> list[tuple[str, str, dict]]:
    ev = data / "eval"
    out = []
    for r in _jsonl(ev / "math500" / "test.jsonl"):
        out.append(("math500", r["answer"], {}))
    for r in _jsonl(ev / "olympiadbench" / "test.jsonl"):
        out.append(("olympiad", _strip_dollars(r["final_answer"][0]), r))
    for r in _jsonl(ev / "minerva_math" / "test.jsonl"):
        gold = checker.last_box(r["solution"])
        if gold is not None:
            out.append(("minerva", gold, {}))
    for name in ("aime24", "aime25"):
        for r in _jsonl(ev / name / "test.jsonl"):
            out.append((name, str(r["answer"]), {}))
    return out


_INT_RE = re.compile(r"-?\d+")
_TUPLE_RE = re.compile(
    r"^\s*(\\left)?\(\s*([^(),]+)\s*,\s*([^(),]+)\s*(\\right)?\)\s*$"
)
_INTERVAL_RE = re.compile(r"^\s*(\\left)?([(\[])(.*)([)\]])\s*$")


def split_top(s: str) -> list[str]:
    """Splits at top-level commas (outside any bracket)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def rewrite_items(data: Path) -> list[tuple[str, str, str, bool]]:
    """Equivalent reformulations: both checkers should accept them."""
    items = []
    for source, gold, row in _golds(data):
        pred = None
        if _INT_RE.fullmatch(gold):
            pred = f"x = {gold}"
        elif row.get("is_multiple_answer") and len(split_top(gold)) > 1:
            pred = ", ".join(reversed(split_top(gold)))
        elif "\\frac{" in gold:
            pred = gold.replace("\\frac{", "\\dfrac{")
        elif (m := _TUPLE_RE.match(gold)) and not m.group(1):
            pred = f"\\left( {m.group(2)}, {m.group(3)} \\right)"
        elif re.fullmatch(r"-?\d+\.\d+", gold):
            pred = gold + "0"
        if pred is not None:
            items.append((source, f"The answer is \\boxed{{{pred}}}.", gold, True))
    return items


def perturbed_items(data: Path) -> list[tuple[str, str, str, bool]]:
    """Wrong answers made from each gold: both checkers should reject them."""
    items = []
    for source, gold, row in _golds(data):
        preds = []
        digits = [i for i, c in enumerate(gold) if c.isdigit()]
        if digits:
            i = digits[0]
            preds.append(gold[:i] + str((int(gold[i]) + 1) % 10) + gold[i + 1 :])
        m = _TUPLE_RE.match(gold)
        if m and m.group(2).strip() != m.group(3).strip():
            preds.append(f"({m.group(3)}, {m.group(2)})")
        m = _INTERVAL_RE.match(gold)
        if m and "," in m.group(3) and not m.group(1):
            flipped = {"(": "[", "[": "("}[m.group(2)]
            if "infty" not in m.group(3).split(",")[0]:
                preds.append(flipped + m.group(3) + m.group(4))
        parts = split_top(gold)
        if row.get("is_multiple_answer") and len(parts) > 1:
            preds.append(", ".join(parts[:-1]))
        for pred in preds:
            items.append((source, f"\\boxed{{{pred}}}", gold, False))
    return items


def table_items() -> list[tuple[str, str, str, bool]]:
    return [
        (group, f"\\boxed{{{pred}}}", gold, expected)
        for group, rows in EQUIVALENCE.items()
        for pred, gold, expected in rows
    ]


def olympiad_items() -> list[tuple[str, str, str, bool, str]]:
    """(category, response, gold, expected, mode) of the olympiad-style table."""
    rows = [json.loads(line) for line in GRADING_TABLE.open()]
    return [
        (r["category"], r["response"], r["gold"], r["expected"], r["mode"])
        for r in rows
    ]


# --------------------------------------------------------------- graders
def ours(pred_text: str, gold: str, mode: str | None = None) -> bool:
    """Eval extraction with strict comparison; a given mode grades as that mode."""
    if mode is not None:
        return checker.score_item(pred_text, gold, mode)[0] == 1.0
    answer = checker.extract_answer(pred_text, mode="eval")
    return answer is not None and checker.is_equivalent(answer, gold)


def theirs(pred_text: str, gold: str, mode: str | None = None) -> bool:
    del mode  # math-verify has one mode
    try:
        gold_parsed = math_verify.parse(f"\\boxed{{{gold}}}")
        pred_parsed = math_verify.parse(pred_text)
        return bool(math_verify.verify(gold_parsed, pred_parsed))
    except Exception:  # noqa: BLE001 - a grader failure is a rejection
        return False


def run(grader, items) -> tuple[list[bool], float]:
    checker.clear_caches()
    start = time.perf_counter()
    decisions = [grader(pred, gold, *rest) for _, pred, gold, _, *rest in items]
    return decisions, time.perf_counter() - start


def report(name: str, items, show: int) -> dict:
    expected = [it[3] for it in items]
    mine, t_mine = run(ours, items)
    n = len(items)
    acc = sum(d == e for d, e in zip(mine, expected)) / n
    kind = "accept" if all(expected) else "reject" if not any(expected) else "labelled"
    print(f"\n== {name}: {n} items (expected: {kind})")
    print(f"  ours        accuracy {acc:7.2%}   {n / t_mine:9.0f} answers/s")
    out = {"n": n, "ours_acc": acc, "ours_rate": n / t_mine}
    if math_verify is None:
        wrong = [(it, d) for it, d in zip(items, mine) if d != it[3]]
    else:
        base, t_base = run(theirs, items)
        acc_b = sum(d == e for d, e in zip(base, expected)) / n
        agree = sum(a == b for a, b in zip(mine, base)) / n
        print(f"  math-verify accuracy {acc_b:7.2%}   {n / t_base:9.0f} answers/s")
        print(
            f"  agreement {agree:7.2%};  throughput ratio ours/math-verify {t_base / t_mine:.1f}x"
        )
        out.update(mv_acc=acc_b, mv_rate=n / t_base, agree=agree)
        wrong = [
            (it, a, b)
            for it, a, b in zip(items, mine, base)
            if a != it[3] or b != it[3]
        ]
    fp_ours = sum(d and not e for d, e in zip(mine, expected))
    print(f"  false positives: ours {fp_ours}", end="")
    if math_verify is not None:
        fp_base = sum(d and not e for d, e in zip(base, expected))
        print(f", math-verify {fp_base}", end="")
    print()
    if len({it[0] for it in items}) <= 12:  # a table by category: break it down
        columns = [mine] if math_verify is None else [mine, base]
        print_by_category(items, columns)
    if wrong:
        print(f"  items where a checker is wrong ({len(wrong)}; ours, math-verify):")
        for row in wrong[:show]:
            (source, pred, gold, exp, *_), *decisions = row
            marks = " ".join("ok " if d == exp else "BAD" for d in decisions)
            answer = checker.extract_answer(pred, mode="eval")
            print(f"    [{marks}] {source}: pred={answer!r:.60} gold={gold!r:.60}")
        if len(wrong) > show:
            print(f"    ... {len(wrong) - show} more (raise --show)")
    return out


def print_by_category(items, columns: list[list[bool]]) -> None:
    """Correct decisions per category: ours, then math-verify when present."""
    names = sorted({it[0] for it in items})
    header = "ours" if len(columns) == 1 else "ours  math-verify"
    print(f"  {'category':20s} {'n':>4s}  {header}")
    for cat in names:
        idx = [i for i, it in enumerate(items) if it[0] == cat]
        right = [sum(col[i] == items[i][3] for i in idx) for col in columns]
        print(f"  {cat:20s} {len(idx):4d}  " + "  ".join(f"{r:4d}" for r in right))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(paper_data.__file__).parent)
    parser.add_argument("--show", type=int, default=40, help="disagreements to list")
    parser.add_argument("--workers", type=int, default=2, help="reward pool size")
    args = parser.parse_args()
    if math_verify is None:
        print(
            "math-verify is not installed: only our checker runs (see the docstring)."
        )
    else:
        from importlib.metadata import version

        # math-verify logs every timed-out input in full; keep the report short.
        logging.getLogger("math_verify").setLevel(logging.CRITICAL)
        print(f"math-verify {version('math-verify')}")
    sets = [
        ("reference", reference_items(args.data)),
        ("rewrites", rewrite_items(args.data)),
        ("perturbed", perturbed_items(args.data)),
        ("table", table_items()),
        ("olympiad", olympiad_items()),
    ]
    if not sets[0][1]:
        print(f"no data under {args.data}; only the table runs")
    for name, items in sets:
        if items:
            report(name, items, args.show)
    pool_throughput(sets[0][1] or sets[-1][1], args.workers)


def pool_throughput(items, workers: int) -> None:
    """Answers/s through a RewardPool, as the training loop scores a step."""
    responses = [pred for _, pred, _, _ in items]
    golds = [gold for _, _, gold, _ in items]
    with reward.RewardPool(workers=workers, timeout_s=5.0) as pool:
        pool.score(responses[:8], golds[:8])  # wait for the workers to start
        start = time.perf_counter()
        result = pool.score(responses, golds)
        elapsed = time.perf_counter() - start
    print(
        f"\n== RewardPool({workers} workers), {len(items)} whole responses: "
        f"{len(items) / elapsed:.0f} answers/s (timeouts {result.timeouts}, "
        f"errors {result.errors})"
    )


if __name__ == "__main__":
    main()

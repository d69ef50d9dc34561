r"""Sets of reals in sympy (`grading.sets`): never from text, within the deadline.

The set and relation rows of the case table (tests/checker_cases.py) decide
the same with sympy's text parsers made to fail, and the modules that build
sympy objects call none of them. Pathological relations and sets are refused
by the guards or decided well inside the reward pool's per-answer deadline,
in-process and in a fresh pool worker (which also pays sympy's import).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sympy
import sympy.core.cache
import sympy.parsing.sympy_parser

from rlvr_jax import reward
from rlvr_jax.reward import checker
from rlvr_jax.reward.grading import sets
from rlvr_jax.reward.grading.parser import parse
from tests.checker_cases import EQUIVALENCE

REPO = Path(__file__).resolve().parents[1]
GRADING = REPO / "rlvr_jax" / "reward" / "grading"
# The direct-call deadline of tests/test_grading_fuzz.py; the pool's default
# per-answer deadline (reward.DEFAULT_TIMEOUT_S) is 5 s.
DEADLINE_S = 1.0

SET_ROWS = [
    row
    for group in ("sets_of_reals", "intervals", "equations")
    for row in EQUIVALENCE[group]
]

PATHOLOGICAL = [
    # Eight links, each an absolute value solveset has to split: read.
    (" or ".join(f"|x - {i}| < 1" for i in range(8)), "(-1, 8)", True),
    # Past the guards (links, union pieces, exponents, trig arguments, sizes):
    # not read as sets, so the relation rules decide, and refuse.
    (" or ".join(f"|x - {i}| < 1" for i in range(40)), "(-1, 40)", False),
    (" < ".join(["x", *map(str, range(1, 60))]), r"(-\infty, 1)", False),
    (r" \cup ".join(f"[{2 * i}, {2 * i + 1}]" for i in range(60)), "[0, 1]", False),
    (r"x \in (1, 10^{10^{10}})", r"(1, \infty)", False),
    (r"-10^{10^{10}} < x < 10^{10^{10}}", r"\mathbb{R}", False),
    (r"x > \sin(10^{4000})", r"(\sin(10^{4000}), \infty)", False),
    (r"x > e^{e^{e^{3}}}", r"(1, \infty)", False),
    (r"x \ge \frac{" + "9" * 390 + "}{" + "7" * 390 + "}", r"[1, \infty)", False),
    # Nested and many radicals as bounds: read, and far from (0, 1).
    (r"|x - (\sqrt{2}+\sqrt{3}+\sqrt{5}+\sqrt{7})| < \sqrt{11}", "(0, 1)", False),
    (
        r"x \in [\sqrt{2}+\sqrt{3}, 5] \cup [1, \sqrt{5+2\sqrt{6}}]",
        "[1, 5]",
        True,
    ),
    (r"x > 2^{\frac{1}{64}} 3^{\frac{1}{63}} 5^{\frac{1}{62}}", r"(1, \infty)", False),
]


def _clear():
    checker.clear_caches()
    sets.clear_cache()
    sympy.core.cache.clear_cache()


def _decide_all(rows):
    for pred, gold, expected in rows:
        for a, b in ((pred, gold), (gold, pred)):
            result = checker.explain(a, b)
            assert result.equal is expected, (a, b, result.rule)
            assert not result.error, (a, b, result.rule)


def test_no_text_reaches_a_sympy_parser(monkeypatch):
    # A first pass unpatched: sympy imports some of its own modules on first
    # use, and those sympify their own literals (units' prefix names).
    _decide_all(SET_ROWS)
    handed = []

    def parse_expr(text, *args, **kwargs):
        handed.append(text)
        raise AssertionError(f"text handed to sympy: {text!r}")

    # The module, not the function that sympy.core re-exports under its name.
    sympify_module = importlib.import_module("sympy.core.sympify")
    original = sympify_module.sympify

    def sympify(a, *args, **kwargs):
        if isinstance(a, str):
            parse_expr(a)
        return original(a, *args, **kwargs)

    # sympify reads text through sympy_parser.parse_expr, looked up at call
    # time; the package-level names are what outside code would call.
    monkeypatch.setattr(sympy.parsing.sympy_parser, "parse_expr", parse_expr)
    monkeypatch.setattr(sympify_module, "sympify", sympify)
    monkeypatch.setattr(sympy, "sympify", sympify)
    monkeypatch.setattr(sympy, "parse_expr", parse_expr)
    with pytest.raises(AssertionError):
        original("x + 1")  # the patches are live
    handed.clear()
    _clear()
    _decide_all(SET_ROWS)
    assert handed == []


@pytest.mark.parametrize("name", ["sets.py", "relations.py", "rules.py", "values.py"])
def test_the_grading_calls_no_parser_of_text(name):
    forbidden = {"sympify", "parse_expr", "parse_latex", "S", "eval", "exec"}
    forbidden |= {"lambdify", "compile", "__import__"}
    tree = ast.parse((GRADING / name).read_text())
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called.add(
                func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            )
    assert not called & forbidden


@pytest.mark.parametrize(
    "pred, gold, expected",
    [pytest.param(*row, id=f"pathological-{i}") for i, row in enumerate(PATHOLOGICAL)],
)
def test_a_pathological_set_is_decided_within_the_deadline(pred, gold, expected):
    sets.answer_set(parse("x > 0"))  # sympy is loaded (once a process): not timed
    _clear()
    for a, b in ((pred, gold), (gold, pred)):
        start = time.perf_counter()
        result = checker.explain(a, b)
        elapsed = time.perf_counter() - start
        assert result.equal is expected, (a[:60], result.rule)
        assert not result.error, result.rule
        assert elapsed < DEADLINE_S, f"{elapsed:.2f} s"


def test_a_fresh_pool_worker_scores_sets_within_its_deadline():
    # The worker imports sympy at its first set, inside that answer's deadline.
    responses = [rf"\boxed{{{pred}}}" for pred, _, _ in PATHOLOGICAL]
    golds = [gold for _, gold, _ in PATHOLOGICAL]
    with reward.RewardPool(workers=1, timeout_s=reward.DEFAULT_TIMEOUT_S) as pool:
        result = pool.score(responses, golds)
    assert result.timeouts == 0 and result.errors == 0
    assert list(result.rewards) == [float(e) for _, _, e in PATHOLOGICAL]


def test_sympy_loads_only_for_an_answer_that_may_be_a_set():
    code = (
        "import sys\n"
        "from rlvr_jax.reward import checker\n"
        "assert checker.is_equivalent('x = 2', '2')\n"
        "assert checker.is_equivalent('y = 2x + 1', 'y = 1 + 2x')\n"
        "assert not checker.is_equivalent('x^2 = 4', '2')\n"
        "assert 'sympy' not in sys.modules\n"
        "assert checker.is_equivalent('x > 1', '(1, \\\\infty)')\n"
        "assert 'sympy' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

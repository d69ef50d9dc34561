"""The lab's synthetic task family: deterministic, exact, disjoint splits."""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest
import sympy

from rlvr_jax.data import examples as data
from rlvr_jax.lab import synthetic
from rlvr_jax.reward import checker


def _independent_answer(p: synthetic.Problem):
    """The answer computed from the problem text alone, not by the generator."""
    text = p.problem
    if p.domain == "arith":
        expr = re.fullmatch(r"Compute ([\d +*-]+)\.", text).group(1)
        return sympy.sympify(expr)  # standard precedence
    if p.domain == "linear":
        lhs, rhs = re.fullmatch(r"Solve (.+) = (\d+)\.", text).groups()
        x = sympy.Symbol("x")
        (sol,) = sympy.solve(
            sympy.sympify(lhs.replace("x", "*x").lstrip("*")) - int(rhs), x
        )
        return sol
    if p.domain == "fraction":
        a, op, b = re.fullmatch(r"Compute (\d+/\d+) ([+*]) (\d+/\d+)\.", text).groups()
        return Fraction(a) + Fraction(b) if op == "+" else Fraction(a) * Fraction(b)
    letter, s = re.fullmatch(r"Count (\w) in (\w+)\.", text).groups()
    return s.count(letter)


def test_same_seed_same_problems_other_seed_others():
    a = synthetic.splits(3, 40, 10)
    assert a == synthetic.splits(3, 40, 10)
    b = synthetic.splits(4, 40, 10)
    assert [p.problem for p in a["arith"][0]] != [p.problem for p in b["arith"][0]]


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_answers_are_correct_and_graded_by_the_checker(domain):
    train, test = synthetic.splits(0, 150, 30)[domain]
    for p in train + test:
        truth = _independent_answer(p)
        assert sympy.nsimplify(str(truth)) == sympy.nsimplify(p.answer), p
        # The worked solution earns the training reward; a wrong box does not.
        assert checker.reward(p.solution, p.answer) == 1.0, p
        assert checker.reward("\\boxed{" + str(truth + 1) + "}", p.answer) == 0.0, p
        assert p.solution.endswith(f"\\boxed{{{p.answer}}}")
    assert {p.difficulty for p in train} == set(synthetic.DIFFICULTIES)


def test_splits_are_disjoint_and_sized():
    for train, test in synthetic.splits(0, 300, 50).values():
        assert len(train) == 300 and len(test) == 50
        texts = [p.problem for p in train + test]
        assert len(set(texts)) == len(texts)


def test_problems_are_short_for_the_character_tokenizer():
    for train, _ in synthetic.splits(0, 300, 50).values():
        assert max(len(p.problem) for p in train) <= 40
        assert max(len(p.solution) for p in train) <= 64


def test_generate_rejects_unknown_domain_and_level():
    with pytest.raises(ValueError, match="unknown domain"):
        synthetic.generate("calculus", random.Random(0), 1)
    with pytest.raises(ValueError, match="difficulty"):
        synthetic.generate("arith", random.Random(0), 4)


def test_written_files_load_as_pool_and_eval_sets(tmp_path):
    root = synthetic.write(str(tmp_path / "lab"), seed=1, n_train=30, n_test=6)
    pool = data.load_examples(f"{root}/train.jsonl")
    assert len(pool) == 4 * 30
    assert [ex.index for ex in pool] == list(range(120))
    linear = data.load_examples(f"{root}/linear/train.jsonl")
    # The per-domain pool keeps the pool's ids, so indices name one problem.
    assert data.select(pool, [ex.index for ex in linear]) == linear
    paths = synthetic.eval_paths(root).split(",")
    assert len(paths) == 4
    for path in paths:
        assert len(data.load_examples(path)) == 6
    # Idempotent: same arguments, files untouched.
    mtime = (tmp_path / "lab" / "train.jsonl").stat().st_mtime_ns
    synthetic.write(root, seed=1, n_train=30, n_test=6)
    assert (tmp_path / "lab" / "train.jsonl").stat().st_mtime_ns == mtime


def test_too_many_problems_for_a_domain_fail_loudly():
    with pytest.raises(ValueError, match="distinct"):
        synthetic.splits(0, 100_000, 10, domains=("linear",))

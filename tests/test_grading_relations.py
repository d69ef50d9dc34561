"""Relations read as answers: labels, solution sets, unions, labelled tuples."""

import pytest

from rlvr_jax.reward import checker
from rlvr_jax.reward.grading import relations
from rlvr_jax.reward.grading.normalize import normalize
from rlvr_jax.reward.grading.parser import parse


def _tree(text: str):
    return parse(normalize(text))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x", True),
        ("f(x)", True),
        ("AB", True),
        ("|PQ|", True),
        (r"\angle ABC", True),
        ("AB:CD", True),
        ("(a, b)", True),
        ("2x", False),
        ("x + y", False),
        ("(1, b)", False),
        ("x^2", False),
    ],
)
def test_is_label(text, expected):
    assert relations.is_label(_tree(text)) is expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        (r"|x - 3| < 2", "(1, 5)", True),
        (r"|x - 3| \le 2", "[1, 5]", True),
        (r"|3 - x| < 2", "(1, 5)", False),  # only x - a, x + a, a + x are read
        (r"|x + 3| > 2", r"(-\infty, -5) \cup (-1, \infty)", True),
        (r"2 < |x + 3|", r"(-\infty, -5) \cup (-1, \infty)", True),
        (r"|x + 3| \ge 2", r"(-\infty, -5) \cup (-1, \infty)", False),
        (r"|2x| < 2", "(-1, 1)", False),  # not a center form: no set is read
        (r"x < 2 \text{ or } x > 3", r"(-\infty, 2) \cup (3, \infty)", True),
        (r"x < 2 \text{ and } x > 3", r"(-\infty, 2) \cup (3, \infty)", False),
        (r"x > 1 \text{ and } x < 3", "(1, 3)", True),
        (r"x \ge 1 \text{ and } x < 3", "[1, 3)", True),
        (r"x \ge 1 \text{ and } x < 3", "(1, 3)", False),
        (r"x > 1 \text{ and } x > 3", "(1, 3)", False),
        (r"x < 2 \text{ or } y > 3", r"(-\infty, 2) \cup (3, \infty)", False),
        (r"0 < t \le 4", r"t \in (0, 4]", True),
        (r"0 < x \le 4", r"t \in (0, 4]", False),  # another variable
        (r"t \in (0, 4]", "t(0,4]", True),  # OlympiadBench drops the \in
    ],
)
def test_solution_sets(pred, gold, expected):
    assert checker.is_equivalent(pred, gold) is expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("m = 12, n = 7", "(12, 7)", True),
        ("n = 7, m = 12", "(12, 7)", False),  # written order is the order
        ("m = 12, m = 7", "(12, 7)", False),  # one label twice: alternatives
        ("m = 12, n = 7", "12, 7", True),
        ("m = 12, n = 7", "7, 12", True),  # a list gold stays unordered
        ("(a, b) = (4, 1)", "(4, 1)", True),
        ("(a, b) = (1, 4)", "(4, 1)", False),
        ("|PQ| = 2", "2", True),
        ("2x = 10", "10", False),
        ("x + y = 10", "10", False),
    ],
)
def test_labelled_answers(pred, gold, expected):
    assert checker.is_equivalent(pred, gold) is expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        (r"\frac{\sqrt{2}}{2} \approx 0.707", r"\frac{1}{\sqrt{2}}", True),
        (r"x = \frac{\sqrt{2}}{2} \approx 0.707", r"\frac{1}{\sqrt{2}}", True),
        (r"\frac{\sqrt{3}}{2} \approx 0.707", r"\frac{1}{\sqrt{2}}", False),
        (r"x \approx 0.707", r"\frac{1}{\sqrt{2}}", False),  # strict mode
        (r"2x \approx 1.414", r"\sqrt{2}", False),
        (r"x = 2 + 3 = 5", "5", True),
        (r"x = 2 + 3 = 6", "6", False),  # a broken chain states nothing
    ],
)
def test_chains(pred, gold, expected):
    assert checker.is_equivalent(pred, gold) is expected


def test_eval_mode_rounding_is_for_matrix_entries_only():
    column = r"\begin{pmatrix} 0.333 \\ 0.667 \end{pmatrix}"
    gold = r"\begin{pmatrix} 1/3 \\ 2/3 \end{pmatrix}"
    assert checker.is_equivalent(column, gold, mode="eval")
    assert not checker.is_equivalent(column, gold, mode="boxed")
    assert not checker.is_equivalent("0.333", r"\frac{1}{3}", mode="eval")
    short = r"\begin{pmatrix} 0.33 \\ 0.67 \end{pmatrix}"  # two digits
    assert not checker.is_equivalent(short, gold, mode="eval")
    off = r"\begin{pmatrix} 0.334 \\ 0.667 \end{pmatrix}"  # not the rounding
    assert not checker.is_equivalent(off, gold, mode="eval")

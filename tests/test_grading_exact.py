"""Exact equality of values (`grading.values.equal_at`) beyond the case table.

The decisions themselves are rows of tests/checker_cases.py ("exact_values");
here: what is refused rather than decided, and that raising the precision
leaves the evaluation context as it was.
"""

import pytest

from rlvr_jax.reward.grading import values
from rlvr_jax.reward.grading.normalize import normalize
from rlvr_jax.reward.grading.parser import parse


def _tree(text: str):
    return parse(normalize(text))


@pytest.mark.parametrize(
    "a, b",
    [
        ("3000! + 1", "3000!"),  # ~60,000 bits to see the 1
        ("2^{300000} + 1", "2^{300000}"),
    ],
)
def test_values_that_need_too_many_bits_are_refused(a, b):
    with pytest.raises(values.Undefined):
        values.equal_at(_tree(a), _tree(b), [], 0)


def test_raising_the_precision_leaves_the_context_as_it_was():
    prec = values.C.prec
    tiny = _tree(r"\sqrt{2} + 10^{-400}")
    assert values.equal_at(tiny, _tree(r"\sqrt{2}"), [], 0) is False
    assert values.equal_at(_tree(r"\sin(\pi)"), _tree("0"), [], 0) is True
    assert values.C.prec == prec

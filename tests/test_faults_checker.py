"""Nothing silently wrong: the answer checker on huge adversarial responses.

The reward pool kills a worker that passes an item's deadline (5 s) and
scores the item 0 (`rlvr_jax.reward.pool`), so a checker slow on long
responses would score right answers 0 as timeouts. Each ~2 MB response here
(many boxes, a long unclosed box, deeply nested braces, a huge number, long
text without a box) must be scored right by a direct `checker.reward` call in
under a second: finding the last box, and the boxes joined to it, is linear
in the length of the response (`rlvr_jax.reward.grading.extract`).
"""

from __future__ import annotations

import time

import pytest

from rlvr_jax.reward import checker

MB2 = 2_000_000
BOX = "\\boxed{1}"
RUN = "\\boxed{3}" + "\\boxed{2}" * (MB2 // 9) + "\\boxed{1}"

HUGE = [
    # Many boxes: one answer stated over and over (joined, counted once).
    pytest.param("\\boxed{1}" * (MB2 // 9), "1", 1.0, id="many-boxes"),
    pytest.param("\\boxed{1}" * (MB2 // 9), "2", 0.0, id="many-boxes-wrong"),
    pytest.param("$\\boxed{1}$, " * (MB2 // 13), "1", 1.0, id="many-boxes-in-math"),
    pytest.param(
        "\\boxed{\\frac{1}{2}} and " * (MB2 // 23), "1/2", 1.0, id="many-fractions"
    ),
    # Boxes joined by nothing state one answer, read back to the first box.
    pytest.param(RUN, "\\{1, 2, 3\\}", 1.0, id="joined-run"),
    pytest.param(RUN, "1", 0.0, id="joined-run-not-its-last-box"),
    # The last box is the one graded: the boxes before it are steps.
    pytest.param("\\boxed{2}. Next, " * (MB2 // 16) + BOX, "1", 1.0, id="last-box"),
    pytest.param("\\boxed{2}. Next, " * (MB2 // 16) + BOX, "2", 0.0, id="not-a-step"),
    # A long unclosed box, last: no answer.
    pytest.param("\\boxed{" + "1" * MB2, "1", 0.0, id="unclosed-box"),
    pytest.param("\\boxed{" + "{}" * (MB2 // 2), "1", 0.0, id="unclosed-braces"),
    pytest.param("\\boxed{" * (MB2 // 7), "1", 0.0, id="unclosed-boxes"),
    pytest.param(BOX + "\\boxed{" * (MB2 // 7), "1", 0.0, id="box-then-unclosed"),
    # Deeply nested braces, around the box or inside it.
    pytest.param("{" * (MB2 // 2) + BOX + "}" * (MB2 // 2), "1", 1.0, id="nested-box"),
    pytest.param(
        "\\boxed{" + "{" * (MB2 // 2) + "1" + "}" * (MB2 // 2) + "}",
        "1",
        0.0,  # far over the answer length limit
        id="nested-in-box",
    ),
    pytest.param("\\boxed{" + "\\{" * (MB2 // 2) + "}", "1", 0.0, id="escaped-braces"),
    # A huge number: longer than any answer the checker compares.
    pytest.param("\\boxed{" + "9" * MB2 + "}", "9" * MB2, 0.0, id="huge-number"),
    pytest.param(
        "So \\boxed{" + "9" * MB2 + "} or \\boxed{7}", "7", 0.0, id="huge-hedge"
    ),
    # Long text without a box, or with its box at the very start.
    pytest.param("The answer is 1. " * (MB2 // 17), "1", 0.0, id="no-box"),
    pytest.param(BOX + " and so on" * (MB2 // 10), "1", 1.0, id="box-first"),
    pytest.param("\\boxedx{1}" * (MB2 // 10) + BOX, "1", 1.0, id="longer-commands"),
]


@pytest.mark.parametrize("response, gold, expected", HUGE)
def test_a_huge_response_is_scored_right_within_a_second(response, gold, expected):
    assert len(response) > 1_900_000
    checker.clear_caches()
    start = time.perf_counter()
    score = checker.reward(response, gold)
    elapsed = time.perf_counter() - start
    assert score == expected
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_a_long_run_of_boxes_is_read_to_its_start():
    # However long the run, a hedge never scores its last box.
    assert checker.extract_answer(RUN) == "3, 2, 1"
    assert checker.extract_answer("\\boxed{2}" * 100_000 + BOX) == "2, 1"
    assert checker.reward("\\boxed{2}" * 100_000 + BOX, "2") == 0.0
    # A step of the working before the run is left out.
    assert checker.extract_answer("\\boxed{4}. So " + RUN) == "3, 2, 1"


def test_huge_answers_and_golds_are_refused_at_once():
    huge = "\\boxed{" + "1" * MB2 + "}"
    assert checker.last_box(huge) == "1" * MB2
    assert checker.explain("1" * MB2, "1").rule == "answer too long"
    assert checker.is_equivalent("1", huge) is False
    assert checker.extract_answer("words " * (MB2 // 6), mode="eval") is None
    assert checker.extract_answer(huge, mode="eval") == "1" * MB2

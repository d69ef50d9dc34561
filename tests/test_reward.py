"""Tests for the reward pool: order, reuse, deadlines, crashes, poisoned input."""

import os
import time

import pytest

from rlvr_jax import reward
from rlvr_jax.reward import checker

HANG = "<<hang>>"
CRASH = "<<crash>>"


def planted_scorer(response, gold, mode):
    """The real scorer, except that planted items hang or kill the worker."""
    if response == HANG:
        while True:  # a grader stuck for good, as sympy can be
            pass
    if response == CRASH:
        os._exit(3)
    return checker.score_item(response, gold, mode)


@pytest.fixture(scope="module")
def pool():
    with reward.RewardPool(workers=2, timeout_s=5.0) as p:
        yield p


def _batch(n: int) -> tuple[list[str], list[str], list[float]]:
    """n responses with known rewards: right, wrong, unboxed, reformatted."""
    kinds = [
        (r"so \boxed{{{v}}}", 1.0),
        (r"so \boxed{{{w}}}", 0.0),
        ("I think it is {v}", 0.0),
        (r"\boxed{{x = \frac{{{d}}}{{2}}}}", 1.0),
    ]
    responses, golds, expected = [], [], []
    for i in range(n):
        template, value = kinds[i % len(kinds)]
        v = i % 97
        responses.append(template.format(v=v, w=v + 1, d=2 * v))
        golds.append(str(v))
        expected.append(value)
    return responses, golds, expected


def test_scores_in_order_and_pool_is_reusable(pool):
    responses, golds, expected = _batch(400)
    first = pool.score(responses, golds)
    assert first.rewards == expected
    assert (first.timeouts, first.errors) == (0, 0)
    assert first.extracted[0] == "0" and first.extracted[2] is None
    # Reuse without restarting workers; a reversed batch comes back reversed.
    second = pool.score(responses[::-1], golds[::-1])
    assert second.rewards == expected[::-1]
    assert pool.restarts == 0


def test_eval_mode(pool):
    result = pool.score(
        ["The answer is 27.", r"\boxed{1.3333}", "no number"],
        [27.0, r"\frac43", "1"],
        mode="eval",
    )
    assert result.rewards == [1.0, 1.0, 0.0]
    assert result.extracted == ["27", "1.3333", None]


def test_empty_batch_and_bad_arguments(pool):
    assert pool.score([], []).rewards == []
    with pytest.raises(ValueError):
        pool.score(["a"], [])
    with pytest.raises(ValueError):
        pool.score(["a"], ["b"], mode="lenient")


def test_injection_through_the_pool(pool, tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"\\boxed{{__import__('pathlib').Path({str(marker)!r}).touch()}}",
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"__import__('os').system('touch {marker}')",
    ]
    result = pool.score(payloads, ["-98765.4321"] * 3)
    result_eval = pool.score(payloads, ["-98765.4321"] * 3, mode="eval")
    assert result.rewards == [0.0] * 3 and result_eval.rewards == [0.0] * 3
    assert not marker.exists()


ADVERSARIAL = [
    r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    r"\boxed{10^{10^{10}}}",
    r"\boxed{10^{10^{10^{10}}}}",
    r"\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    r"\boxed{(10^{100})!}",
    r"\boxed{\binom{10^{9}}{5 \cdot 10^{8}}}",
    r"\boxed{\frac{x^{10^{9}}-1}{x-1}}",
    r"\boxed{" + "1" * 1_000_000 + "}",
    "x" * 1_000_000,
    "\\boxed{" * 100_000,
    r"\boxed{\frac{1}{}",
    r"\boxed{\begin{pmatrix}1 & 2}",
    "\\boxed{\x00\x01\x02}",
    "\\boxed{\u202e\U0001f600\ufeff}",
    r"\boxed{9^{9^{9^{9}}} - 9^{9^{9^{9}}}}",
]


def test_adversarial_inputs_meet_a_short_deadline():
    with reward.RewardPool(workers=2, timeout_s=2.0) as p:
        start = time.perf_counter()
        result = p.score(ADVERSARIAL, ["7"] * len(ADVERSARIAL))
        assert time.perf_counter() - start < 10.0
        # Every item finished inside its deadline, graded 0, without errors.
        assert (result.timeouts, result.errors) == (0, 0)
        assert result.rewards == [0.0] * len(ADVERSARIAL)
        after = p.score([r"\boxed{7}"], ["7"])
        assert after.rewards == [1.0]


def test_stuck_worker_is_killed_and_replaced():
    responses, golds, expected = _batch(40)
    for i in (3, 17, 18):
        responses[i], expected[i] = HANG, 0.0
    with reward.RewardPool(workers=2, timeout_s=0.5, scorer=planted_scorer) as p:
        start = time.perf_counter()
        result = p.score(responses, golds)
        elapsed = time.perf_counter() - start
        assert result.rewards == expected
        assert (result.timeouts, result.errors) == (3, 0)
        assert p.restarts == 3
        assert elapsed < 10.0
        # The replacements work, and a per-call deadline overrides the pool's.
        again = p.score([HANG, r"\boxed{1}"], ["1", "1"], timeout_s=0.2)
        assert again.rewards == [0.0, 1.0] and again.timeouts == 1


def test_crashed_worker_counts_as_an_error():
    responses, golds, expected = _batch(20)
    responses[5], expected[5] = CRASH, 0.0
    with reward.RewardPool(workers=2, timeout_s=5.0, scorer=planted_scorer) as p:
        result = p.score(responses, golds)
        assert result.rewards == expected
        assert (result.timeouts, result.errors) == (0, 1)
        assert p.score([r"\boxed{2}"], ["2"]).rewards == [1.0]


def test_2000_items_with_poison():
    responses, golds, expected = _batch(2000)
    poison = {
        11: HANG,
        500: r"\boxed{10^{10^{10^{10}}}}",
        777: HANG,
        1234: r"\boxed{" + "9" * 1_000_000 + "}",
        1999: "\\boxed{" + "{" * 10_000,
    }
    for i, text in poison.items():
        responses[i], expected[i] = text, 0.0
    with reward.RewardPool(workers=2, timeout_s=1.0, scorer=planted_scorer) as p:
        result = p.score(responses, golds)
    assert len(result.rewards) == 2000
    assert result.rewards == expected
    assert (result.timeouts, result.errors) == (2, 0)


def test_closed_pool_refuses_work():
    p = reward.RewardPool(workers=1)
    p.close()
    p.close()  # idempotent
    with pytest.raises(RuntimeError):
        p.score(["x"], ["y"])


def test_score_batch_returns_floats_in_order():
    responses, golds, expected = _batch(24)
    assert reward.score_batch(responses, golds, timeout_s=5.0) == expected
    # The shared pool is reused by the next call.
    assert reward.score_batch([r"\boxed{3}"], ["3"]) == [1.0]

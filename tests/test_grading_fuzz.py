"""Fuzzing the grader: random and adversarial LaTeX never breaks `reward`.

Deterministic (seeded). Every input must return 0.0 or 1.0 without raising,
within the deadline, without an internal error, and without executing
anything: payloads that would create a canary file, if anything ever ran
them, are mixed in, and the file must not exist at the end.
"""

import random
import time

import pytest

from rlvr_jax import reward
from rlvr_jax.reward import checker

DEADLINE_S = 1.0

FRAGMENTS = [
    "1", "27", "0.5", "x", "y", "n", "+", "-", "^", "_", "(", ")", "[", "]", "{",
    "}", r"\{", r"\}", ",", "=", "<", ">", r"\le", r"\geq", r"\neq", r"\approx",
    r"\in", r"\cup", r"\frac", r"\dfrac", r"\sqrt", r"\pi", r"\infty", r"\pm",
    r"\left(", r"\right)", r"\left[", r"\right]", r"\begin{pmatrix}",
    r"\end{pmatrix}", r"\begin{array}{cc}", r"\end{array}", "&", r"\\", "|",
    r"\text{ or }", r"\text{and}", r"\boxed{", r"\fbox{", "$", r"\,", r"\!",
    ",\\!", r"\%", "%", r"^\circ", r"\angle", "AB", ":", "'", "!", " ", "\n",
    r"\sin", r"\log_", r"\binom", r"\lfloor", r"\rfloor", r"\overline", "e",
    "i", "1,000", r"1{,}000", "the answer is ", " is $", "\u2265", "\u221a",
]  # fmt: skip


def _canary_payloads(path: str) -> list[str]:
    return [
        f"__import__('os').system('touch {path}')",
        f"__import__('pathlib').Path({path!r}).touch()",
        f"exec(\"open({path!r}, 'w').write('x')\")",
        f"eval(\"__import__('os').system('touch {path}')\")",
        f"$(touch {path})",
        f"`touch {path}`",
        f"\\immediate\\write18{{touch {path}}}",
        f"\\input{{|touch {path}}}",
        f"\\def\\x{{\\write18{{touch {path}}}}}\\x",
        f"Symbol('x').__class__.__init__.__globals__['os'].system('touch {path}')",
        f"x = __import__('os').system('touch {path}') \\approx 1",
    ]


def _adversarial(rng: random.Random) -> list[str]:
    depth = rng.randint(200, 2000)
    return [
        "{" * depth + "1" + "}" * depth,
        r"\frac{" * depth + "1",
        r"\sqrt{" * depth + "2" + "}" * depth,
        r"\left(" * depth + "x" + r"\right)" * depth,
        "|" * depth + "x",
        "x^{" * depth + "2" + "}" * depth,
        "10^{10^{10^{10^{10}}}}",
        f"{rng.randint(2, 9)}^{{{rng.randint(10**6, 10**9)}}}",
        f"({rng.randint(10**5, 10**6)})!",
        r"\binom{10^{12}}{10^{11}}",
        r"e^{e^{e^{e^{e^{10}}}}} = x",
        r"\sin(10^{10^{5}}) \approx 0",
        "1" * rng.randint(10**4, 10**6),
        ("1," * rng.randint(100, 5000)) + "1",
        r"\boxed{" * depth,
        "}" * depth + r"\boxed{1}",
        r"\boxed{1} or " * rng.randint(50, 500),
        "".join(chr(rng.randint(0, 31)) for _ in range(depth)),
        "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(200))
        .encode("utf-8", "replace")
        .decode("utf-8", "replace"),
        "$" * depth + "is " * depth,
        r"|x - " * depth + "1| > 2",
        r"\begin{pmatrix}" + "1&" * depth + r"\end{pmatrix}",
        r"\begin{bmatrix}" + r"1\\" * depth + r"\end{bmatrix}",
        "x < " * depth + "1",
        r"(a,b) = " * depth + "(1,2)",
        "0." + "3" * 390 + r" \approx \frac{1}{3}",
    ]


def _random_latex(rng: random.Random) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 30)))


def _inputs(path: str) -> list[str]:
    rng = random.Random(20260)
    texts = _canary_payloads(path) + _adversarial(rng)
    texts += [_random_latex(rng) for _ in range(1500)]
    payloads = _canary_payloads(path)
    # Payloads inside boxes and relations, where the grader looks hardest.
    texts += [rf"\boxed{{{p}}}" for p in payloads]
    texts += [rf"\boxed{{x = {p}}} and \boxed{{{p}}}" for p in payloads]
    return texts


def test_reward_never_raises_never_hangs_never_executes(tmp_path):
    canary = tmp_path / "canary"
    texts = _inputs(str(canary))
    # Loads sympy (`grading.sets`): once a process, not a cost of any answer.
    checker.is_equivalent("x > 1", r"(1, \infty)")
    golds = ["12.8", r"(-\infty, 2) \cup (3, \infty)", r"\frac{1}{2}", "(2,4)"]
    slowest = 0.0
    for i, text in enumerate(texts):
        gold = golds[i % len(golds)]
        for response, truth in ((text, gold), (rf"\boxed{{{gold}}}", text)):
            start = time.perf_counter()
            score, _, error = checker.score_item(response, truth, "boxed")
            checker.score_item(response, truth, "eval")
            slowest = max(slowest, time.perf_counter() - start)
            assert score in (0.0, 1.0)
            assert not error, (response[:80], truth[:80])
    assert slowest < DEADLINE_S, slowest
    assert not canary.exists()


@pytest.mark.parametrize("mode", ["boxed", "eval"])
def test_reward_pool_meets_its_deadline_on_adversarial_input(tmp_path, mode):
    # The pool is the real guard: what a worker cannot finish is killed.
    canary = tmp_path / "canary"
    texts = _canary_payloads(str(canary)) + _adversarial(random.Random(1))
    with reward.RewardPool(workers=1, timeout_s=DEADLINE_S) as pool:
        result = pool.score(texts, ["7"] * len(texts), mode=mode)
    assert result.timeouts == 0 and result.errors == 0
    assert list(result.rewards) == [0.0] * len(texts)
    assert not canary.exists()

"""A synthetic math task family for the laptop lab: seeded, exact, short.

Four domains, each with three difficulty levels, every problem with an exact
answer and a worked solution that ends in `\\boxed{answer}`:

    arith     Compute 3 + 4 * 2.      4 * 2 = 8. 3 + 8 = 11. \\boxed{11}
    linear    Solve 3x + 4 = 19.      3x = 19 - 4 = 15. x = 15 / 3 = 5. \\boxed{5}
    fraction  Compute 1/2 + 1/3.      1/2 + 1/3 = 3/6 + 2/6 = 5/6. \\boxed{5/6}
    count     Count b in abcbb.       b: bbb. \\boxed{3}

Texts are short because the tiny tokenizer spends one token per character.
Answers are non-negative; fractions are reduced (an integer when whole).

Files (`write(root, ...)`), rows as `data.load_examples` reads them
(`problem`, `answer`, `id`) plus `solution`, `domain` and `difficulty`:

    root/train.jsonl            every domain's training pool (ids 0..N-1)
    root/<domain>/train.jsonl   one domain's training pool (same ids)
    root/<domain>/test.jsonl    one domain's held-out split

Evaluation names a set by its parent directory, so `root/<domain>/test.jsonl`
is logged as `eval/<domain>/acc`. A problem text appears in one split only.

    python -m rlvr_jax.lab.synthetic --out=/tmp/lab_data --seed=0
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from fractions import Fraction

from rlvr_jax import io as io_lib

DOMAINS = ("arith", "linear", "fraction", "count")
DIFFICULTIES = (1, 2, 3)
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One generated problem.

    Attributes:
      domain: one of DOMAINS.
      difficulty: 1 (easy) to 3 (hard).
      problem: the question text.
      solution: worked steps ending in `\\boxed{answer}`.
      answer: the exact answer string (what the reward compares against).
    """

    domain: str
    difficulty: int
    problem: str
    solution: str
    answer: str


def _boxed(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


def _frac(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


# ------------------------------------------------------------------ domains
def _arith(rng: random.Random, level: int) -> Problem:
    """+, -, * over 1–3 operators; * binds first, then left to right."""
    # Level 1 spans 1..20 so that it alone has ~1,000 distinct problems.
    n_ops, hi = {1: (1, 20), 2: (2, 9), 3: (3, 12)}[level]
    while True:
        nums = [rng.randint(1, hi) for _ in range(n_ops + 1)]
        ops = [rng.choice("+-*") for _ in range(n_ops)]
        steps = []
        # Collapse products first, recording each as a step.
        vals, rest_ops = [nums[0]], []
        for op, x in zip(ops, nums[1:]):
            if op == "*":
                steps.append(f"{vals[-1]} * {x} = {vals[-1] * x}")
                vals[-1] *= x
            else:
                vals.append(x)
                rest_ops.append(op)
        acc = vals[0]
        for op, x in zip(rest_ops, vals[1:]):
            new = acc + x if op == "+" else acc - x
            steps.append(f"{acc} {op} {x} = {new}")
            acc = new
        if acc >= 0:
            break
    text = " ".join([str(nums[0])] + [f"{o} {x}" for o, x in zip(ops, nums[1:])])
    return Problem(
        "arith",
        level,
        f"Compute {text}.",
        ". ".join(steps) + ". " + _boxed(str(acc)),
        str(acc),
    )


def _linear(rng: random.Random, level: int) -> Problem:
    """x + b = c, then a x = c, then a x + b = c; x a non-negative integer."""
    # Levels 1 and 2 span ~900 problems each (a few thousand per domain are
    # drawn; `splits` cycles the levels, so the smallest level bounds them).
    x = rng.randint(0, 30 if level == 1 else 15)
    if level == 1:
        b = rng.randint(1, 30)
        problem = f"Solve x + {b} = {x + b}."
        solution = f"x = {x + b} - {b} = {x}."
    elif level == 2:
        x, a = rng.randint(0, 49), rng.randint(2, 19)
        problem = f"Solve {a}x = {a * x}."
        solution = f"x = {a * x} / {a} = {x}."
    else:
        a, b = rng.randint(2, 9), rng.randint(1, 20)
        c = a * x + b
        problem = f"Solve {a}x + {b} = {c}."
        solution = f"{a}x = {c} - {b} = {c - b}. x = {c - b} / {a} = {x}."
    return Problem("linear", level, problem, f"{solution} {_boxed(str(x))}", str(x))


def _fraction(rng: random.Random, level: int) -> Problem:
    """Same-denominator sums, then unlike sums, then products."""
    if level == 1:
        d = rng.randint(2, 15)
        a, c = rng.randint(1, d - 1), rng.randint(1, d - 1)
        x, y = Fraction(a, d), Fraction(c, d)
        problem = f"Compute {a}/{d} + {c}/{d}."
        steps = [f"{a}/{d} + {c}/{d} = {a + c}/{d}"]
        result = x + y
    elif level == 2:
        b, d = rng.sample(range(2, 10), 2)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        x, y = Fraction(a, b), Fraction(c, d)
        common = b * d
        problem = f"Compute {a}/{b} + {c}/{d}."
        steps = [
            f"{a}/{b} + {c}/{d} = {a * d}/{common} + {c * b}/{common}"
            f" = {a * d + c * b}/{common}"
        ]
        result = x + y
    else:
        b, d = rng.randint(2, 9), rng.randint(2, 9)
        a, c = rng.randint(1, 9), rng.randint(1, 9)
        problem = f"Compute {a}/{b} * {c}/{d}."
        steps = [f"{a}/{b} * {c}/{d} = {a * c}/{b * d}"]
        result = Fraction(a, b) * Fraction(c, d)
    answer = _frac(result)
    if steps[-1].rsplit(" = ", 1)[-1] != answer:
        steps.append(f"= {answer}")
    return Problem(
        "fraction", level, problem, f"{' '.join(steps)}. {_boxed(answer)}", answer
    )


def _count(rng: random.Random, level: int) -> Problem:
    """Occurrences of one letter in a short random string."""
    length, alphabet = {1: (6, "abc"), 2: (8, "abc"), 3: (12, "abcd")}[level]
    s = "".join(rng.choice(alphabet) for _ in range(length))
    letter = rng.choice(alphabet)
    k = s.count(letter)
    kept = letter * k if k else "none"
    return Problem(
        "count",
        level,
        f"Count {letter} in {s}.",
        f"{letter}: {kept}. {_boxed(str(k))}",
        str(k),
    )


_GENERATORS = {
    "arith": _arith,
    "linear": _linear,
    "fraction": _fraction,
    "count": _count,
}


def generate(domain: str, rng: random.Random, difficulty: int) -> Problem:
    """One problem of `domain` at `difficulty` (1–3), drawn from `rng`."""
    if domain not in _GENERATORS:
        raise ValueError(f"unknown domain {domain!r}; known: {DOMAINS}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty}")
    return _GENERATORS[domain](rng, difficulty)


# ------------------------------------------------------------------- splits
def splits(
    seed: int, n_train: int, n_test: int, domains=DOMAINS
) -> dict[str, tuple[list[Problem], list[Problem]]]:
    """{domain: (train, test)}: distinct texts, difficulties cycled 1, 2, 3.

    Test problems are drawn first and their texts excluded from the train
    pool, so the two splits never share a problem. Each domain has its own
    stream (`seed` and the domain name), so adding a domain or changing one
    domain's sizes leaves the others' problems unchanged.

    Raises:
      ValueError: when a domain has too few distinct problems for the sizes.
    """
    out = {}
    for domain in domains:
        rng = random.Random(f"{seed}:{domain}")
        seen: set[str] = set()
        drawn: list[Problem] = []
        misses = 0  # draws in a row that repeated a text: the space is exhausted
        while len(drawn) < n_test + n_train:
            p = generate(domain, rng, DIFFICULTIES[len(drawn) % len(DIFFICULTIES)])
            if p.problem in seen:
                misses += 1
                if misses > 2000:
                    raise ValueError(
                        f"domain {domain!r} has fewer than {n_test + n_train} "
                        f"distinct problems at seed {seed} ({len(drawn)} found)"
                    )
                continue
            misses = 0
            seen.add(p.problem)
            drawn.append(p)
        out[domain] = (drawn[n_test:], drawn[:n_test])
    return out


def _row(p: Problem, index: int) -> dict:
    return {
        "id": index,
        "problem": p.problem,
        "answer": p.answer,
        "solution": p.solution,
        "domain": p.domain,
        "difficulty": p.difficulty,
    }


def write(root: str, seed: int = 0, n_train: int = 2000, n_test: int = 50) -> str:
    """Writes the lab's files under `root` (see the module docstring).

    Idempotent: if `root` already holds files from the same arguments
    (its manifest says so), nothing is rewritten. Returns `root`.
    """
    manifest = {"seed": seed, "n_train": n_train, "n_test": n_test, "domains": DOMAINS}
    manifest_path = os.path.join(root, MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            if json.load(f) == json.loads(json.dumps(manifest)):
                return root
    pool = []
    for domain, (train, test) in splits(seed, n_train, n_test).items():
        rows = [_row(p, len(pool) + i) for i, p in enumerate(train)]
        pool += rows
        os.makedirs(os.path.join(root, domain), exist_ok=True)
        io_lib.write_jsonl(os.path.join(root, domain, "train.jsonl"), rows)
        # Test ids are per file; evaluation reads answers, never ids.
        io_lib.write_jsonl(
            os.path.join(root, domain, "test.jsonl"),
            [_row(p, i) for i, p in enumerate(test)],
        )
    io_lib.write_jsonl(os.path.join(root, "train.jsonl"), pool)
    # The manifest goes last: its presence means every file is complete.
    io_lib.write_atomic(manifest_path, json.dumps(manifest))
    return root


def eval_paths(root: str, domains=DOMAINS) -> str:
    """The comma-separated held-out files of `domains` (an `eval.path` value)."""
    return ",".join(os.path.join(root, d, "test.jsonl") for d in domains)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_train", type=int, default=2000, help="per domain")
    parser.add_argument("--n_test", type=int, default=50, help="per domain")
    args = parser.parse_args(argv)
    write(args.out, args.seed, args.n_train, args.n_test)
    print(
        f"wrote {args.out}: {len(DOMAINS)} domains × {args.n_train} train, {args.n_test} test"
    )


if __name__ == "__main__":
    main()

"""The paper's evaluation benchmarks: names, file layouts, fields and protocols.

Each `Benchmark` says where its problems come from (the standard
`<name>/test.jsonl` of the Qwen2.5-Math evaluation harness), which field holds
the problem, how the gold answer is read, and the paper's sampling protocol:

| name          | problem field         | gold                           | protocol    |
|---------------|-----------------------|--------------------------------|-------------|
| math500       | problem               | last \\boxed{} of `solution`    | greedy × 1  |
| minerva_math  | problem               | last \\boxed{} of `solution`    | greedy × 1  |
| olympiadbench | question              | `final_answer[0]`, `$` stripped | greedy × 1  |
| aime24        | question / problem    | `answer`                       | T=0.6 × 8   |
| aime25        | problem               | `answer`                       | T=0.6 × 8   |
| amc23         | question / problem    | `answer` (27.0 → "27")         | T=0.6 × 8   |

MATH500 rows also carry the problem's `subject` (seven MATH subjects) and
`level` (1-5), and OlympiadBench rows their `subfield` (Algebra,
Combinatorics, Geometry, Number Theory): the categories (`Benchmark.categories`)
that results break down by, for the paper's cross-category view (an algebra
example lifting geometry). A row without one has None there.

The `…x8` variants are the harness's 8× replicated files (each row sampled
once at T=0.6); rows with the same problem form one group, so they report the
same avg@8 as the base file sampled 8 times.

Problems load from a jsonl file or a directory in the standard layout
(`load_jsonl`); `rlvr_jax.data.tfds_builders.load_problems` reads the same problems
from a prepared TensorFlow Datasets builder. Every load error names the file
and line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from rlvr_jax import io as io_lib
from rlvr_jax.reward.checker import last_box

# The canonical six, in the order of the paper's table.
PAPER_SIX = ("math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench")

# Where the packaged files (rlvr_jax/data/paper_data/eval) come from: the
# Qwen2.5-Math harness's data folder, and AIME 2025 from the 1-shot RLVR fork
# of it. Provenance only: nothing here downloads.
_QWEN_DATA = (
    "https://raw.githubusercontent.com/QwenLM/Qwen2.5-Math/main/evaluation/data"
)
_RLVR_DATA = (
    "https://raw.githubusercontent.com/ypwang61/One-Shot-RLVR/main/"
    "Qwen2.5-Eval/evaluation/data"
)


# The category fields a Problem can carry, as the source files name them.
CATEGORIES = ("subject", "level", "subfield")


class BenchmarkError(ValueError):
    """A bad benchmark name, file or row; the message names which."""


# ------------------------------------------------------------ gold answers
def _last_box_of_solution(row: dict) -> str | None:
    solution = row.get("solution")
    if not isinstance(solution, str):
        return None
    return last_box(solution)


def _answer(row: dict) -> str | None:
    value = row.get("answer")
    if value is None or isinstance(value, (list, dict, bool)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # AMC stores 27.0 for "27"
    return str(value).strip()


def _first_final_answer(row: dict) -> str | None:
    value = row.get("final_answer")
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        return None
    return value[0].strip("$").strip()


# How each rule reads the gold answer from a row; a table so a new benchmark
# names a rule instead of adding a branch.
GOLD_RULES: dict[str, Callable[[dict], str | None]] = {
    "last_box_of_solution": _last_box_of_solution,
    "answer": _answer,
    "first_final_answer": _first_final_answer,
}


# --------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark's data layout and evaluation protocol.

    Attributes:
      name: registry key and directory name (`<dir>/<name>/test.jsonl`).
      title: the name used in tables and plots.
      count: rows in the standard file (a sanity reference, not enforced).
      problem_keys: the first of these present in a row holds the problem
        (the harness's `question` before `problem` order).
      gold_rule: a key of `GOLD_RULES`.
      temperature: the paper's sampling temperature (0 = greedy).
      n_samples: samples per row.
      url: the public source the packaged file was taken from, or None.
      categories: the row fields of `CATEGORIES` this benchmark's rows carry
        (read by `parse_categories`; results break down by them).
    """

    name: str
    title: str
    count: int
    problem_keys: tuple[str, ...]
    gold_rule: str
    temperature: float
    n_samples: int
    url: str | None = None
    categories: tuple[str, ...] = ()

    @property
    def protocol(self) -> str:
        """The paper's protocol in words, e.g. "greedy" or "T=0.6 x 8"."""
        return describe_protocol(self.temperature, self.n_samples)


def describe_protocol(temperature: float, n: int) -> str:
    """A short label for a sampling protocol ("greedy", "T=0.6 x 8")."""
    head = "greedy" if temperature == 0 else f"T={temperature:g}"
    return head if n == 1 else f"{head} x {n}"


_GREEDY = dict(temperature=0.0, n_samples=1)
_AVG8 = dict(temperature=0.6, n_samples=8)
_REPLICATED = dict(temperature=0.6, n_samples=1)
_Q = ("question", "problem")

REGISTRY: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "math500",
            "MATH500",
            500,
            _Q,
            "last_box_of_solution",
            **_GREEDY,
            url=f"{_QWEN_DATA}/math500/test.jsonl",
            categories=("subject", "level"),
        ),
        Benchmark(
            "aime24",
            "AIME24",
            30,
            _Q,
            "answer",
            **_AVG8,
            url=f"{_QWEN_DATA}/aime24/test.jsonl",
        ),
        Benchmark(
            "aime25",
            "AIME25",
            30,
            _Q,
            "answer",
            **_AVG8,
            url=f"{_RLVR_DATA}/aime25/test.jsonl",
        ),
        Benchmark(
            "amc23",
            "AMC23",
            40,
            _Q,
            "answer",
            **_AVG8,
            url=f"{_QWEN_DATA}/amc23/test.jsonl",
        ),
        Benchmark(
            "minerva_math",
            "Minerva",
            272,
            _Q,
            "last_box_of_solution",
            **_GREEDY,
            url=f"{_QWEN_DATA}/minerva_math/test.jsonl",
        ),
        Benchmark(
            "olympiadbench",
            "OlympiadBench",
            675,
            _Q,
            "first_final_answer",
            **_GREEDY,
            url=f"{_QWEN_DATA}/olympiadbench/test.jsonl",
            categories=("subfield",),
        ),
        Benchmark("aime24x8", "AIME24 (x8 file)", 240, _Q, "answer", **_REPLICATED),
        Benchmark("aime25x8", "AIME25 (x8 file)", 240, _Q, "answer", **_REPLICATED),
        Benchmark("amc23x8", "AMC23 (x8 file)", 320, _Q, "answer", **_REPLICATED),
    )
}


def get(name: str) -> Benchmark:
    """The registered benchmark `name`.

    Raises:
      BenchmarkError: naming the unknown benchmark and the known ones.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise BenchmarkError(
            f"unknown benchmark {name!r}; known: {', '.join(REGISTRY)}"
        ) from None


# ---------------------------------------------------------------- problems
@dataclasses.dataclass(frozen=True)
class Problem:
    """One evaluation row.

    Attributes:
      benchmark: the benchmark's name.
      index: 0-based row number in the source.
      group: index of the first row with the same problem and gold; rows of a
        replicated file share it, and avg@k / pass@k are taken per group.
      problem: the question text, as the prompt template receives it.
      gold: the reference answer string.
      subject: MATH500's subject ("Algebra", "Geometry", ...), else None.
      level: MATH500's difficulty level 1-5, else None.
      subfield: OlympiadBench's subfield ("Combinatorics", ...), else None.
    """

    benchmark: str
    index: int
    group: int
    problem: str
    gold: str
    subject: str | None = None
    level: int | None = None
    subfield: str | None = None

    def categories(self) -> dict[str, str | int | None]:
        """{field: value} of the categories its benchmark declares (values
        may be None where a row lacks one); {} for a benchmark without."""
        return {f: getattr(self, f) for f in get(self.benchmark).categories}


def parse_row(benchmark: Benchmark, row: dict, where: str) -> tuple[str, str]:
    """(problem, gold) of one raw row.

    Args:
      benchmark: the benchmark whose field layout applies.
      row: the decoded JSON object.
      where: "file:line" for error messages.

    Raises:
      BenchmarkError: naming `where` and the missing or malformed field.
    """
    if not isinstance(row, dict):
        raise BenchmarkError(
            f"{where}: expected a JSON object, got {type(row).__name__}"
        )
    problem = next(
        (row[k] for k in benchmark.problem_keys if isinstance(row.get(k), str)), None
    )
    if not problem or not problem.strip():
        raise BenchmarkError(
            f"{where}: {benchmark.name} row has no problem text in any of "
            f"{list(benchmark.problem_keys)} (keys: {sorted(row)})"
        )
    gold = GOLD_RULES[benchmark.gold_rule](row)
    if gold is None or not gold:
        raise BenchmarkError(
            f"{where}: {benchmark.name} row has no gold answer "
            f"(rule {benchmark.gold_rule!r}; keys: {sorted(row)})"
        )
    return problem, gold


def _level(value, where: str) -> int | None:
    if value is None:
        return None
    level = value
    if isinstance(value, str):
        # MATH500's files store 3; Hendrycks' MATH stores "Level 3".
        digits = value.strip().removeprefix("Level").strip()
        level = int(digits) if digits.isdigit() else None
    elif isinstance(value, float) and value.is_integer():
        level = int(value)
    if not isinstance(level, int) or isinstance(level, bool):
        raise BenchmarkError(f"{where}: level {value!r} is not an integer")
    return level


def _label(name: str, value, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BenchmarkError(f"{where}: {name} {value!r} is not a non-empty string")
    return value.strip()


def parse_categories(benchmark: Benchmark, row: dict, where: str) -> dict:
    """{field: value} of the benchmark's `categories` in one raw row; a
    missing field gives None (a user's file may lack it).

    Raises:
      BenchmarkError: a present but malformed field, naming `where`.
    """
    return {
        f: _level(row.get(f), where) if f == "level" else _label(f, row.get(f), where)
        for f in benchmark.categories
    }


def grouped(
    benchmark: Benchmark,
    items: Sequence[tuple[str, str]],
    categories: Sequence[dict] | None = None,
) -> list[Problem]:
    """Problems of (problem, gold) pairs in row order, grouped by the pair.

    Args:
      benchmark: whose rows these are.
      items: (problem, gold) per row.
      categories: per row, `parse_categories`' dict (None: no categories).
    """
    first: dict[tuple[str, str], int] = {}
    cats = categories if categories is not None else [{}] * len(items)
    return [
        Problem(benchmark.name, i, first.setdefault(pg, i), pg[0], pg[1], **c)
        for i, (pg, c) in enumerate(zip(items, cats, strict=True))
    ]


def read_jsonl(path: str) -> list[tuple[dict, str]]:
    """(row, "path:line") pairs of a benchmark's jsonl file (`rlvr_jax.io`).

    Raises:
      BenchmarkError: a missing or empty file, or a line that is not a JSON
        object.
    """
    if not os.path.isfile(path):
        raise BenchmarkError(f"benchmark file not found: {path}")
    try:
        rows = io_lib.read_jsonl_located(path)
    except io_lib.JsonlError as e:
        raise BenchmarkError(str(e)) from e
    if not rows:
        raise BenchmarkError(f"{path}: no rows")
    return rows


def standard_path(data_dir: str, name: str) -> str:
    """`<data_dir>/<name>/test.jsonl`, the harness's layout."""
    return os.path.join(data_dir, name, "test.jsonl")


def load_jsonl(name: str, path: str) -> list[Problem]:
    """Problems of benchmark `name` from a jsonl file or standard-layout dir.

    Args:
      name: a registered benchmark name (decides fields and gold rule).
      path: a `.jsonl` file, or a directory holding `<name>/test.jsonl`.

    Raises:
      BenchmarkError: unknown name, missing file, malformed line or row.
    """
    benchmark = get(name)
    if os.path.isdir(path):
        path = standard_path(path, name)
    rows = read_jsonl(path)
    return grouped(
        benchmark,
        [parse_row(benchmark, r, w) for r, w in rows],
        [parse_categories(benchmark, r, w) for r, w in rows],
    )


def parse_spec(spec: str) -> list[tuple[str, str | None]]:
    """Parses "math500,aime24=/path/file.jsonl" into (name, path-or-None) pairs.

    Raises:
      BenchmarkError: an empty list, an unknown name or a duplicate.
    """
    out: list[tuple[str, str | None]] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, path = item.partition("=")
        get(name.strip())
        if any(n == name.strip() for n, _ in out):
            raise BenchmarkError(f"benchmark {name.strip()!r} listed twice in {spec!r}")
        out.append((name.strip(), path.strip() or None))
    if not out:
        raise BenchmarkError(f"no benchmarks in {spec!r}")
    return out

"""One problem's responses from an evaluation, printed to read them.

    python -m rlvr_jax.evaluation.show --workdir=/tmp/pi1 --benchmark=math500 \
        --problem=12 [--step=500 | --tag=Qwen2.5-Math-1.5B]

Reads `<workdir>/eval/<tag>/generations/<benchmark>.jsonl` (written by
`rlvr_jax.evaluate`) and prints the problem's gold answer, categories and
prompt, then every response to it with its grade: right or wrong, the answer
the grader extracted, and whether it ends in a well-formed box
(`checker.well_formed` under the run's think rule; format apart from
correctness), its length and why it stopped.

`--problem` is the 0-based row of the benchmark file (the records' `index`);
in a replicated file (aime24x8) every row of the problem's group is shown.
Without `--step` or `--tag` the latest evaluated step is read (or the only
evaluation there is). A missing workdir, step, benchmark or problem ends the
command on one `error: ...` line naming what exists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from rlvr_jax import io as io_lib
from rlvr_jax.evaluation import results as results_lib
from rlvr_jax.reward import checker

_STEP_TAG = re.compile(r"^step_(\d+)$")
_RULE = "-" * 24


class ShowError(ValueError):
    """A missing evaluation, benchmark or problem; the message names which."""


def evaluations(workdir: str) -> dict[str, int | None]:
    """{tag: step or None} of the evaluations under `<workdir>/eval/` that
    hold generations, steps first in order, then the other tags by name."""
    root = os.path.join(workdir, io_lib.EVAL_DIR)
    found: dict[str, int | None] = {}
    if os.path.isdir(root):
        for tag in os.listdir(root):
            if os.path.isdir(os.path.join(root, tag, "generations")):
                m = _STEP_TAG.match(tag)
                found[tag] = int(m.group(1)) if m else None
    big = float("inf")
    order = sorted(found, key=lambda t: (big if found[t] is None else found[t], t))
    return {t: found[t] for t in order}


def choose_tag(workdir: str, step: int | None = None, tag: str | None = None) -> str:
    """The evaluation to read: `tag`, the one of `step`, else the latest step
    (or the only evaluation).

    Raises:
      ShowError: none under the workdir, an unevaluated step or tag, both
        given, or several evaluations without steps and no choice.
    """
    root = os.path.join(workdir, io_lib.EVAL_DIR)
    found = evaluations(workdir)
    if not found:
        raise ShowError(f"no evaluations with generations under {root}")
    steps = [s for s in found.values() if s is not None]
    if step is not None and tag is not None:
        raise ShowError("give --step or --tag, not both")
    if tag is not None:
        if tag not in found:
            raise ShowError(
                f"no evaluation {tag!r} under {root}; evaluated: {', '.join(found)}"
            )
        return tag
    if step is not None:
        chosen = [t for t, s in found.items() if s == step]
        if not chosen:
            raise ShowError(
                f"step {step} was not evaluated under {root}; evaluated: "
                f"{', '.join(found)}"
            )
        return chosen[0]
    if steps:
        return [t for t, s in found.items() if s == max(steps)][0]
    if len(found) > 1:
        raise ShowError(
            f"several evaluations under {root} ({', '.join(found)}); pick one "
            "with --tag"
        )
    return next(iter(found))


def problem_records(
    workdir: str, tag: str, benchmark: str, problem: int
) -> tuple[list[dict], bool]:
    """(records of `problem`'s group in sample order, the run's think rule).

    Raises:
      ShowError: no generations of `benchmark` for `tag`, or no such problem.
    """
    gen_dir = os.path.join(workdir, io_lib.EVAL_DIR, tag, "generations")
    path = os.path.join(gen_dir, f"{benchmark}.jsonl")
    if not os.path.isfile(path):
        have = sorted(
            f[: -len(".jsonl")] for f in os.listdir(gen_dir) if f.endswith(".jsonl")
        )
        raise ShowError(
            f"no {benchmark} generations for {tag} in {gen_dir}; it has: "
            f"{', '.join(have) or 'none'}"
        )
    records = io_lib.read_jsonl(path)
    group = next((r["group"] for r in records if r["index"] == problem), None)
    if group is None:
        indices = sorted({r["index"] for r in records})
        raise ShowError(
            f"{benchmark} problem {problem} is not in {tag}'s generations "
            f"(it has {len(indices)}, from {indices[0]} to {indices[-1]})"
        )
    chosen = [r for r in records if r["group"] == group]
    chosen.sort(key=lambda r: (r["sample"], r["index"]))
    # The rule that graded them: generations settings carry it when it is not
    # the default (`rlvr_jax.data.tasks.score_settings`).
    settings = results_lib.read_json(
        os.path.join(gen_dir, f"{benchmark}.settings.json")
    )
    score = (settings or {}).get("score") or {}
    return chosen, bool(score.get("think", False))


def render(records: Sequence[dict], think: bool, tag: str, problem: int) -> str:
    """The text `show` prints for one problem's records."""
    first = records[0]
    right = sum(bool(r.get("correct")) for r in records)
    formed = [checker.well_formed(r["response"], think=think) for r in records]
    categories = [
        f"{f} {first[f]}" for f in ("subject", "level", "subfield") if first.get(f)
    ]
    where = "; ".join([tag, *categories])
    lines = [
        f"{first['benchmark']} problem {problem} ({where}): {len(records)} "
        f"response(s), {right} correct, {sum(formed)} well-formed",
        f"gold: {first['gold']}",
        f"{_RULE} prompt",
        first["prompt"],
    ]
    for i, (r, ok) in enumerate(zip(records, formed)):
        grade = "correct" if r.get("correct") else "wrong"
        lines += [
            f"{_RULE} response {i + 1}/{len(records)}: {grade}, extracted "
            f"{r.get('extracted')!r}, {'boxed' if ok else 'no well-formed box'}, "
            f"{r['length']} tokens, {r['finish_reason']}",
            r["response"],
        ]
    return "\n".join(lines) + "\n"


def show(
    workdir: str,
    benchmark: str,
    problem: int,
    step: int | None = None,
    tag: str | None = None,
) -> str:
    """The responses to `problem` of `benchmark` at a step (or tag), as text.

    Raises:
      ShowError: see `choose_tag` and `problem_records`.
    """
    chosen = choose_tag(workdir, step, tag)
    records, think = problem_records(workdir, chosen, benchmark, problem)
    return render(records, think, chosen, problem)


def main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    try:
        print(show(f.workdir, f.benchmark, f.problem, f.step, f.tag), end="")
    except ShowError as e:
        raise SystemExit(f"error: {e}") from None


def cli() -> None:
    """The command line (`python -m rlvr_jax.evaluation.show`)."""
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "the evaluate workdir (holds eval/)")
    flags.DEFINE_string("benchmark", None, "benchmark name, e.g. math500")
    flags.DEFINE_integer("problem", None, "0-based row of the benchmark file")
    flags.DEFINE_integer("step", None, "evaluated step; default: the latest")
    flags.DEFINE_string("tag", None, "an evaluation's directory name instead")
    flags.mark_flags_as_required(["workdir", "benchmark", "problem"])
    app.run(main)


if __name__ == "__main__":
    cli()

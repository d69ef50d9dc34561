"""Answer extraction and equivalence: the training reward and eval grading.

The public face of the grader; the work is done in `rlvr_jax.reward.grading`:

    extract     the final answer of a response: the last brace-matched
                `\\boxed{}` for the training reward (docs/recipe.md, "The training
                reward"), leniently in the "eval" mode (docs/recipe.md,
                "Evaluation"); boxes joined only by "and", "or"
                or commas are one answer, so a hedge "\\boxed{5} or
                \\boxed{6}" is the list {5, 6}, never its last box;
                with the think rule (`think=True`, DeepSeek-R1-Distill) only
                the text after `</think>` is read, and a response that never
                closes its thinking has no answer (`after_thinking`)
    normalize   notation that never changes a value (spacing, \\left, $, ...)
    lexer       whitelisted tokens; anything else is an error
    parser      a typed, inert syntax tree (`grading.nodes`)
    values      exact Fractions and guarded 192-bit numbers
    relations   labels (`|PQ| = 2`), solution sets (`0 < x \\le 4`, `|x| > 2`)
    rules       equivalence: structure, then rational, numeric, identity

Equivalence is decided by rules tried in order: exact string; normalised
string; multiple-choice letters ("(C)", "\\text{C}", "C"); then the parsed
trees (`grading.rules.match`). In the training ("boxed") mode rationals must be
equal exactly (a decimal side allows 1e-9); the "eval" mode uses the harness's
relative 1e-4.

Why the LaTeX grammar is ours: the reward grades about a thousand untrusted
answers a step, and the maintained parsers fit that poorly. sympy's
`parse_latex` needs one exact antlr4 runtime (its lark backend evaluates
eagerly, so `10^{10^{10}}` does not return), and latex2sympy2_extended, which
math-verify uses, is far slower per expression (`benchmarks/checker.py`
prints both checkers' throughput). Nothing derived from the text is evaluated
as code, and worst-case inputs still run in a killable worker
(`rlvr_jax.reward`), never under SIGALRM.

Run `python -m rlvr_jax.checker PRED GOLD` to see a decision and its rule.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import NamedTuple

from rlvr_jax.reward.grading import parser
from rlvr_jax.reward.grading.extract import (
    MODES,
    THINK_END,
    after_thinking,
    extract_answer,
    last_box,
)
from rlvr_jax.reward.grading.lexer import MAX_CHARS, GrammarError
from rlvr_jax.reward.grading.nodes import Error
from rlvr_jax.reward.grading.normalize import normalize
from rlvr_jax.reward.grading.parser import parse
from rlvr_jax.reward.grading.rules import EVAL, STRICT, Tol, match, prepare

__all__ = [
    "MODES",
    "THINK_END",
    "Explanation",
    "after_thinking",
    "clear_caches",
    "explain",
    "extract_answer",
    "is_equivalent",
    "last_box",
    "reward",
    "score_item",
    "well_formed",
]

MAX_ANSWER_CHARS = MAX_CHARS


_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|textrm)\s*\{([^{}]*)\}")
_CHOICE_RE = re.compile(r"\(?\s*([A-E])\s*\)?")


def _choice(s: str) -> str | None:
    m = _CHOICE_RE.fullmatch(_WRAPPER_RE.sub(r"\1", s).strip())
    return m.group(1) if m else None


class Explanation(NamedTuple):
    """A decision and the rule (or the reason for a mismatch) behind it."""

    equal: bool
    rule: str
    error: bool = False


def _as_text(x) -> str | None:
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, float):
        return repr(int(x)) if x.is_integer() else repr(x)
    return x if isinstance(x, str) else str(x)


def _decide(pred, gold, tol: Tol) -> Explanation:
    pred, gold = _as_text(pred), _as_text(gold)
    if pred is None or gold is None or not pred.strip() or not gold.strip():
        return Explanation(False, "no answer")
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return Explanation(False, "answer too long")
    if pred.strip() == gold.strip():
        return Explanation(True, "exact string")
    p, g = normalize(pred), normalize(gold)
    if not p or not g:
        return Explanation(False, "empty after normalisation")
    if " ".join(p.split()) == " ".join(g.split()):
        return Explanation(True, "normalised string")
    cg, cp = _choice(g), _choice(p)
    if cg is not None or cp is not None:
        if cg == cp:
            return Explanation(True, "choice")
        if cg is not None and cp is not None:
            return Explanation(False, "different choice")
    tp, tg = parse(p), parse(g)
    if isinstance(tg, Error):
        return Explanation(False, f"gold not parsed: {tg.message}")
    if isinstance(tp, Error):
        return Explanation(False, f"prediction not parsed: {tp.message}")
    try:
        rule = match(prepare(tp), prepare(tg), tol)
    except GrammarError as err:
        return Explanation(False, f"not comparable: {err}")
    if rule:
        return Explanation(True, rule)
    return Explanation(False, "different value or structure")


def _safe_decide(pred, gold, tol: Tol) -> Explanation:
    # Untrusted input must never crash a caller; an unexpected exception is a
    # mismatch, flagged so that the reward pool can count it.
    pred, gold = _as_text(pred), _as_text(gold)
    try:
        if len(pred or "") > MAX_ANSWER_CHARS or len(gold or "") > MAX_ANSWER_CHARS:
            return _decide(pred, gold, tol)  # rejected at once; never cached
        return _decide_cached(pred, gold, tol)
    except RecursionError:
        return Explanation(False, "nested too deeply", error=True)
    except Exception as err:  # noqa: BLE001 - see the comment above
        return Explanation(False, f"internal error: {type(err).__name__}", error=True)


# A training step grades ~1024 responses to one gold, many with the same answer.
_decide_cached = functools.lru_cache(maxsize=16384)(_decide)


def clear_caches() -> None:
    """Forgets cached decisions and parses (for benchmarks of cold grading)."""
    _decide_cached.cache_clear()
    parser.clear_cache()


def _tol(mode: str) -> Tol:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return STRICT if mode == "boxed" else EVAL


def is_equivalent(pred: str, gold: str, mode: str = "boxed") -> bool:
    """Whether two final answers are the same mathematical answer.

    Args:
      pred: the predicted answer (already extracted, e.g. a box's content).
      gold: the ground-truth answer; a `\\boxed{}` inside it is extracted. A
        number (AMC stores 27.0) is accepted too.
      mode: "boxed" (strict, the training reward) or "eval" (relative 1e-4 on
        numbers, the eval harness's tolerance).

    Returns:
      True when they are equivalent under the rules in the module docstring.
    """
    return _safe_decide(pred, _gold_answer(gold), _tol(mode)).equal


def explain(pred: str, gold: str, mode: str = "boxed") -> Explanation:
    """Like `is_equivalent`, and also says which rule decided.

    Args:
      pred: the predicted answer.
      gold: the ground-truth answer.
      mode: "boxed" or "eval".

    Returns:
      An Explanation(equal, rule, error).
    """
    return _safe_decide(pred, _gold_answer(gold), _tol(mode))


def _gold_answer(gold):
    text = _as_text(gold)
    if text is not None and ("\\boxed" in text or "\\fbox" in text):
        boxed = last_box(text)
        if boxed is not None:
            return boxed
    return gold


def score_item(
    response: str, gold, mode: str = "boxed", *, think: bool = False
) -> tuple[float, str | None, bool]:
    """Scores one response; never raises for string input.

    What the reward pool's workers run: in "boxed" mode it is the training
    reward, in "eval" mode a benchmark grade.

    Args:
      response: the model's full response.
      gold: the ground-truth answer, or a list of acceptable answers.
      mode: "boxed" or "eval".
      think: the think rule (`after_thinking`): grade only the text after
        `</think>`; a response that never closes its thinking scores 0.

    Returns:
      (reward 1.0/0.0, the extracted answer or None, whether an unexpected
      internal error occurred). In "boxed" mode the answer is None exactly
      when the response is not `well_formed`.
    """
    tol = _tol(mode)
    extracted, error = _final_answer(response, mode, think)
    if extracted is None:
        return 0.0, None, error
    # A list of ground truths (veRL allows one) accepts any of them.
    golds = gold if isinstance(gold, (list, tuple)) else [gold]
    error = False
    for g in golds:
        decision = _safe_decide(extracted, _gold_answer(g), tol)
        if decision.equal:
            return 1.0, extracted, False
        error = error or decision.error
    return 0.0, extracted, error


def _final_answer(response: str, mode: str, think: bool) -> tuple[str | None, bool]:
    """The answer `score_item` grades (None when there is none) and whether
    extracting it raised; the one place that decides what a response
    answers, so that `well_formed` and the reward cannot disagree."""
    if think:
        response = after_thinking(response)
        if response is None:
            return None, False
    try:
        return extract_answer(response, mode), False
    except Exception:  # noqa: BLE001 - untrusted input; counted as an error
        return None, True


def well_formed(response: str, *, think: bool = False) -> bool:
    """Whether a response states a final answer the training reward can grade.

    The format half of the reward, apart from correctness: the "boxed"
    extraction finds an answer, i.e. the last `\\boxed{}` / `\\fbox{}` is
    closed and not empty (and, under the think rule, comes after
    `</think>`). Exactly the responses for which `score_item(..., "boxed",
    think=think)` returns an extracted answer; a right answer is always well
    formed, a well-formed one may be wrong. What the "format" reward kind
    pays for (`rlvr_jax.reward.RewardKind`).

    Args:
      response: the model's full response.
      think: the think rule (`after_thinking`): only a box after `</think>`
        counts, and a response that never closes its thinking is not well
        formed.

    Returns:
      True when the response has a well-formed final boxed answer.
    """
    return _final_answer(response, "boxed", think)[0] is not None


def reward(response: str, ground_truth, *, think: bool = False) -> float:
    """The training reward: 1.0 if the last box matches the ground truth, else 0.0.

    Args:
      response: the model's full response.
      ground_truth: the dataset's answer (`reward_model.ground_truth`).
      think: the think rule: only the box after `</think>` counts, and a
        response that never closes its thinking scores 0 (`after_thinking`).

    Returns:
      1.0 or 0.0. No box, an unclosed last box, or an empty one scores 0.
      Boxes right before the last one, joined to it only by "and", "or" or
      commas, are part of the answer (`extract_answer`).
    """
    return score_item(response, ground_truth, "boxed", think=think)[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m rlvr_jax.checker PRED GOLD`: prints the decision and its rule."""
    parser = argparse.ArgumentParser(
        prog="python -m rlvr_jax.checker",
        description="Compare a predicted answer (or a response with a box) with a gold answer.",
    )
    parser.add_argument("pred", help="an answer, or a whole response with \\boxed{}")
    parser.add_argument("gold", help="the ground-truth answer")
    parser.add_argument("--mode", choices=MODES, default="boxed")
    parser.add_argument(
        "--think", action="store_true", help="grade only the text after </think>"
    )
    args = parser.parse_args(argv)
    pred = args.pred
    if args.think:
        pred = after_thinking(pred)
        if pred is None:
            print(f"NOT EQUAL ({args.mode}, think): thinking never closed")
            return 1
    if args.mode == "eval" or "\\boxed" in pred or "\\fbox" in pred:
        pred = extract_answer(pred, args.mode)
        print(f"extracted: {pred!r}")
    result = explain(pred, args.gold, args.mode)
    verdict = "EQUAL" if result.equal else "NOT EQUAL"
    print(f"{verdict} ({args.mode}): {result.rule}")
    return 0 if result.equal else 1


if __name__ == "__main__":
    sys.exit(main())

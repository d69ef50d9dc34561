"""Finding the final answer in a model response.

The training reward reads the content of the last brace-matched `\\boxed{}` /
`\\fbox{}` (RECIPE.md, "Training reward"); evaluation is lenient (RECIPE.md,
"Evaluation protocol"): the last box, else "the answer is ...", else the last
number.
"""

from __future__ import annotations

import re

MODES = ("boxed", "eval")

_BOX_COMMANDS = {
    "boxed": ("\\boxed", "\\fbox"),
    "eval": ("\\boxed", "\\fbox", "\\framebox"),
}
_BRACE_RE = re.compile(r"\\.|[{}]", re.S)
_ANSWER_IS_RE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*", re.I)
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def _last_box(text: str, commands: tuple[str, ...]) -> tuple[int, str]:
    best, best_cmd = -1, ""
    for cmd in commands:
        pos = text.rfind(cmd)
        # \boxed must not be the prefix of a longer command name.
        while pos >= 0 and text[pos + len(cmd) : pos + len(cmd) + 1].isalpha():
            pos = text.rfind(cmd, 0, pos)
        if pos > best:
            best, best_cmd = pos, cmd
    return best, best_cmd


def _box_content(text: str, start: int) -> str | None:
    """Content of the box whose command ends at `start`; None if unclosed."""
    j = start
    n = len(text)
    if text.startswith("[", j):  # \framebox[width]{...}
        close = text.find("]", j)
        if close < 0:
            return None
        j = close + 1
    while j < n and text[j] in " \t":
        j += 1
    if j < n and text[j] == "{":
        depth = 0
        for m in _BRACE_RE.finditer(text, j):
            tok = m.group()
            if tok == "{":
                depth += 1
            elif tok == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1 : m.start()]
        return None
    if j > start:  # "\boxed 5": the rest of the math, up to $ or a newline
        m = re.compile(r"[^$\n]*").match(text, j)
        return m.group()
    return None


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = None
    for m in pattern.finditer(text):
        last = m
    return last


def _answer_is(text: str) -> str | None:
    last = _last_match(_ANSWER_IS_RE, text)
    if last is None:
        return None
    rest = text[last.end() :].split("\n", 1)[0].strip()
    for opener, closer in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(opener):
            end = rest.find(closer, len(opener))
            if end > 0:
                rest = rest[len(opener) : end]
            break
    else:
        # Prose: stop at the end of the sentence.
        rest = re.split(r"\.\s|\.$", rest, maxsplit=1)[0]
    rest = rest.strip().rstrip(".").strip()
    return rest or None


def _last_number(text: str) -> str | None:
    last = _last_match(_NUMBER_RE, text)
    return last.group().replace(",", "") if last else None


def extract_answer(text: str, mode: str = "boxed") -> str | None:
    """Extracts the final answer from a model response.

    Args:
      text: the response.
      mode: "boxed" (the training reward): the content of the last brace-matched
        `\\boxed{}` or `\\fbox{}`; an unclosed or empty last box is no answer.
        "eval" (benchmark scoring): the last box (also `\\framebox`), else the
        text after the last "the answer is" / "final answer is", else the last
        number in the response.

    Returns:
      The answer string, or None when there is none.

    Raises:
      ValueError: for an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(text, str):
        return None
    pos, cmd = _last_box(text, _BOX_COMMANDS[mode])
    if pos >= 0:
        content = _box_content(text, pos + len(cmd))
        if content is not None and content.strip():
            return content.strip()
    if mode == "boxed":
        return None
    return _answer_is(text) or _last_number(text)

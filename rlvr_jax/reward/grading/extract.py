"""Finding the final answer in a model response.

The training reward reads the content of the last brace-matched `\\boxed{}` /
`\\fbox{}` (docs/recipe.md, "The training reward"), together with the boxes right
before it when only "and", "or" or commas separate them (an answer set spread
over boxes; a hedge then reads as a list, never as its last box). Evaluation
is lenient (docs/recipe.md, "Evaluation"): the boxes, else "the answer is
...", else a value stated with "is" at the end, else a closing display, else
the last number.
"""

from __future__ import annotations

import re

MODES = ("boxed", "eval")

_BOX_COMMANDS = {
    "boxed": ("\\boxed", "\\fbox"),
    "eval": ("\\boxed", "\\fbox", "\\framebox"),
}
_BRACE_RE = re.compile(r"\\.|[{}]", re.S)
_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:|(?:must|should|would|will) be)\s*:?\s*",
    re.I,
)
# "... the probability is $\frac{3}{8}$.": a value stated in math after a
# verb. A bare number is left to the last-number rule.
_STATED_RE = re.compile(
    r"\b(?:is|are|equals|be|was|becomes)\s*:?\s*"
    r"(\$\$.{1,400}?\$\$|\$[^$]{1,400}\$|\\\(.{1,400}?\\\)|\\\[.{1,400}?\\\])",
    re.S,
)
_MATH_OPEN_RE = re.compile(r"\$|\\\(|\\\[")
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
# The stated value is looked for in the closing part of the response only.
_STATED_TAIL_CHARS = 600
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def _last_box(text: str, commands: tuple[str, ...], end: int) -> tuple[int, str]:
    """The start of the last box command before `end`, and which command."""
    best, best_cmd = -1, ""
    for cmd in commands:
        pos = text.rfind(cmd, 0, end)
        # \boxed must not be the prefix of a longer command name.
        while pos >= 0 and text[pos + len(cmd) : pos + len(cmd) + 1].isalpha():
            pos = text.rfind(cmd, 0, pos)
        if pos > best:
            best, best_cmd = pos, cmd
    return best, best_cmd


def _box_content(text: str, start: int) -> tuple[str | None, int]:
    """Content of the box whose command ends at `start` (None if unclosed),
    and the index just after the box."""
    j = start
    n = len(text)
    if text.startswith("[", j):  # \framebox[width]{...}
        close = text.find("]", j)
        if close < 0:
            return None, n
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
                    return text[j + 1 : m.start()], m.end()
        return None, n
    if j > start:  # "\boxed 5": the rest of the math, up to $ or a newline
        m = _UNBRACED_RE.match(text, j)
        return m.group(), m.end()
    return None, n


_UNBRACED_RE = re.compile(r"[^$\n]*")
# What may stand between two boxes that together state one answer:
# "\boxed{4} and \boxed{9}", "$\boxed{(0, 3)}$, $\boxed{(3, 0)}$".
_BOX_GAP_RE = re.compile(
    r"(?:\s|\$|,|;|&|~|\\[,;:! ]|\\q?quad\b|\\[()\[\]]|\band\b|\bor\b"
    r"|\\text\{\s*(?:and|or|,)?\s*\}"
    # "$x = \boxed{2}$ and $x = \boxed{5}$": a one-letter label before a box.
    r"|\b[a-zA-Z](?:_\{?[a-zA-Z0-9]{1,3}\}?)?\s*=)*"
)
_MAX_JOINED_BOXES = 16


def _box_before(text: str, commands: tuple[str, ...], end: int):
    """(start, stripped content, index after) of the last box starting before
    `end`; start is -1 when there is none, content None when unclosed or empty."""
    pos, cmd = _last_box(text, commands, end)
    if pos < 0:
        return -1, None, 0
    content, after = _box_content(text, pos + len(cmd))
    return pos, (content or "").strip() or None, after


def last_box(text: str) -> str | None:
    """The content of the last `\\boxed{}` / `\\fbox{}` alone, or None.

    How a gold is read from a reference solution (docs/recipe.md,
    "Evaluation"): MATH500 writes "\\boxed{15\\frac{39}{40}}, or
    \\boxed{\\frac{639}{40}}" and its answer is the last of the two.
    """
    return _box_before(text, _BOX_COMMANDS["boxed"], len(text))[1]


def _boxed_answer(text: str, commands: tuple[str, ...]) -> str | None:
    """The last box's content, joined with the boxes just before it.

    Boxes separated only by commas, "and", "or", spacing or `$` state one
    answer together: "\\boxed{4} and \\boxed{9}" is the list "4, 9", and a
    hedge "\\boxed{5} or \\boxed{6}" is the list "5, 6", never just 6. A box
    further back, with words between, is a step of the working and is left
    out. Repeated contents count once.
    """
    pos, content, _ = _box_before(text, commands, len(text))
    if content is None:
        return None
    contents = [content]
    while len(contents) < _MAX_JOINED_BOXES:
        prev, prev_content, prev_end = _box_before(text, commands, pos)
        if prev < 0 or prev_content is None or prev_end > pos:
            break  # none, unclosed, empty, or the box around the one we have
        if not _BOX_GAP_RE.fullmatch(text, prev_end, pos):
            break
        if prev_content not in contents:
            contents.append(prev_content)
        pos = prev
    return ", ".join(reversed(contents))


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


def _stated_value(text: str) -> str | None:
    """The last value stated with "is" in the closing paragraph, or None."""
    tail = text[-_STATED_TAIL_CHARS:].rstrip()
    tail = tail[tail.rfind("\n\n") + 1 :]
    last = _last_match(_STATED_RE, tail)
    if last is None or _MATH_OPEN_RE.search(tail, last.end()):
        return None  # "it is $41$ or maybe $42$": not one stated value
    value = last.group(1)
    for opener, closer in _MATH_DELIMS:
        if value.startswith(opener) and value.endswith(closer):
            value = value[len(opener) : len(value) - len(closer)]
            break
    value = value.strip().rstrip(".").strip()
    return value or None


def _closing_display(text: str) -> str | None:
    """The display math a response ends with ("Therefore,\\n\\[\\frac{3}{8}\\]")."""
    tail = text[-_STATED_TAIL_CHARS:].rstrip().rstrip(".").rstrip()
    for opener, closer in (("\\[", "\\]"), ("$$", "$$")):
        if tail.endswith(closer) and len(tail) > len(opener) + len(closer):
            start = tail.rfind(opener, 0, len(tail) - len(closer))
            if start >= 0:
                value = tail[start + len(opener) : len(tail) - len(closer)]
                return value.strip().rstrip(".").strip() or None
    return None


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
        text after the last "the answer is" / "final answer is", else the
        last value stated after "is" in the closing paragraph ("the
        probability is $\\frac{3}{8}$."), else the display math the response
        ends with, else the last number.
        Adjacent boxes joined only by commas or "and"/"or" are one answer
        (see `_boxed_answer`).

    Returns:
      The answer string, or None when there is none.

    Raises:
      ValueError: for an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(text, str):
        return None
    answer = _boxed_answer(text, _BOX_COMMANDS[mode])
    if answer is not None:
        return answer
    if mode == "boxed":
        return None
    return (
        _answer_is(text)
        or _stated_value(text)
        or _closing_display(text)
        or _last_number(text)
    )

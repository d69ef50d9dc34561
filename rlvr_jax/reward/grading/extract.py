"""Finding the final answer in a model response.

The training reward reads the content of the last brace-matched `\\boxed{}` /
`\\fbox{}` (docs/recipe.md, "The training reward"), together with the boxes right
before it when only "and", "or" or commas separate them (an answer set spread
over boxes; a hedge then reads as a list, never as its last box). Evaluation
is lenient (docs/recipe.md, "Evaluation"): the boxes, else "the answer is
...", else a value stated with "is" at the end, else a closing display, else
the last number.

Reasoning models (DeepSeek-R1-Distill) think first: with the think rule
(`after_thinking`) only the text after the thinking is graded, and a response
that never closes its thinking has no answer.

Every search here is linear in the length of the response and runs mostly in
C (regexes, `str` methods): a 2 MB response of boxes, braces or digits is read
in well under a second (tests/test_faults_checker.py).
"""

from __future__ import annotations

import bisect
import collections
import operator
import re
from itertools import accumulate, repeat

MODES = ("boxed", "eval")
# What closes a reasoning model's thinking (DeepSeek-R1's delimiter; its
# opening `<think>\n` ends the chat template's generation prompt).
THINK_END = "</think>"

_BOX_COMMANDS = {
    "boxed": ("\\boxed", "\\fbox"),
    "eval": ("\\boxed", "\\fbox", "\\framebox"),
}
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
_NOT_NUMBER_RE = re.compile(r"[^\d,.\-]")
_DIGIT_RE = re.compile(r"\d")


class _Commands:
    """The box commands of a text, found window by window from its end back.

    The walk over the boxes goes backwards, and `window(end)` is asked with
    `end` never growing: each window is searched once (two regex passes), and
    windows double in size, so a walk over many boxes reads the text about
    twice in all (where an `rfind` from each box would read it once per box)
    and a walk over a few reads little more than they span.
    """

    def __init__(self, text: str, commands: tuple[str, ...]):
        self.text = text
        self.valid, self.other = _COMMAND_RES[commands]
        self.reach = max(map(len, commands)) - 1
        self.lo = len(text)  # text[lo:] has been searched
        self.size = 256

    def window(self, end: int) -> list[tuple[int, int]]:
        """The spans of the box commands in the next window back from `end`
        (all of them ending by `end`), in ascending order; empty when none is
        left."""
        text, found = self.text, []
        self.lo = min(self.lo, end)  # the walk may jump back past a run
        while not found and self.lo > 0:
            lo = max(0, self.lo - self.size)
            # Up to a command that starts before self.lo and ends after it,
            # and the character after that, for the lookaheads.
            hi = self.lo + self.reach + 1
            found = list(map(_SPAN, self.valid.finditer(text, lo, hi)))
            # \boxed must not be the prefix of a longer command name; the
            # regexes leave only other letters than a-z to `isalpha`.
            other = [
                m.span()
                for m in self.other.finditer(text, lo, hi)
                if not text[m.end()].isalpha()
            ]
            if other:
                found = sorted(found + other)
            while found and found[-1][0] >= self.lo:
                found.pop()
            self.lo, self.size = lo, 2 * self.size
        return found


_BRACE_STEP = {"{": 1, "}": -1}


def _closing_brace(text: str, j: int) -> int:
    """The index of the `}` that closes the `{` at `j`, or -1 when unclosed.

    A brace after a backslash (`\\{`; `\\\\` is an escape too) does not
    count. Linear in the distance and at C speed: a chunk whose closing braces
    cannot bring the depth down to zero is only counted, and the depth is
    followed brace by brace (`accumulate`) only through a chunk that may close
    the group. Chunks double in size (up to 64k), so a short group reads
    little past its end.
    """
    depth, a, size, n = 1, j + 1, 64, len(text)
    while a < n:
        b = min(a + size, n)
        # Escapes blanked, lengths kept; "\\\\" first pairs up the backslashes.
        chunk = text[a:b].replace("\\\\", "__").replace("\\{", "__")
        chunk = chunk.replace("\\}", "__")
        if b < n and chunk[-1] == "\\":  # an escape cut in two: next chunk
            b -= 1
            chunk = chunk[:-1]
        closes = chunk.count("}")
        if closes >= depth:
            steps = accumulate(map(_BRACE_STEP.get, chunk, repeat(0)), initial=depth)
            try:
                return a + operator.indexOf(steps, 0) - 1
            except ValueError:
                pass
        depth += chunk.count("{") - closes
        a, size = b, min(2 * size, 1 << 16)
    return -1


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
        close = _closing_brace(text, j)
        if close < 0:
            return None, n
        return text[j + 1 : close], close + 1
    if j > start:  # "\boxed 5": the rest of the math, up to $ or a newline
        m = _UNBRACED_RE.match(text, j)
        return m.group(), m.end()
    return None, n


_UNBRACED_RE = re.compile(r"[^$\n]*")
# What may stand between two boxes that together state one answer:
# "\boxed{4} and \boxed{9}", "$\boxed{(0, 3)}$, $\boxed{(3, 0)}$".
# A gap reads one way only, token by token, so it is matched atomically (the
# lookahead and the group it captures): a failed match does not go back over
# a long gap to try it again token by token.
_BOX_GAP = (
    r"(?=(?P<gap>(?:\s+|\$|,|;|&|~|\\[,;:! ]|\\q?quad\b|\\[()\[\]]|\band\b|\bor\b"
    r"|\\text\{\s*(?:(?:and|or|,)\s*)?\}"
    # "$x = \boxed{2}$ and $x = \boxed{5}$": a one-letter label before a box.
    r"|\b[a-zA-Z](?:_\{?[a-zA-Z0-9]{1,3}\}?)?\s*=)*))(?P=gap)"
)
_BOX_GAP_RE = re.compile(_BOX_GAP)
# The box commands followed by no letter or numeral, and those followed by a
# letter or numeral other than 0-9, a-z, A-Z (which `isalpha` then judges).
_COMMAND_RES = {
    cmds: tuple(
        re.compile("(?:" + "|".join(map(re.escape, cmds)) + follower)
        for follower in (r")(?![^\W\d_])", r")(?=[^\W\d_a-zA-Z])")
    )
    for cmds in _BOX_COMMANDS.values()
}
_SPAN = re.Match.span


def _step_pattern() -> str:
    """A regex for one step of the walk in `_boxed_answer`, read as
    `_box_content` and `_BOX_GAP_RE` read it: after a box command, an optional
    `[width]`, spacing, then a `{}` group nested at most 4 deep (group 1: its
    content) or, after a space or `[width]`, an unbraced box (group 2), then
    only a gap. Loops are unrolled, so a failed match backtracks linearly;
    the lookarounds keep `_box_content`'s choices (all the spacing, no brace
    for an unbraced box, which runs on to a $ or a newline)."""
    content = r"[^{}\\]*(?:\\.[^{}\\]*)*"
    for _ in range(3):
        content = r"[^{}\\]*(?:(?:\\.|\{" + content + r"\})[^{}\\]*)*"
    return (
        r"(?:\[[^\]]*\])?[ \t]*(?![ \t])"
        r"(?:\{(" + content + r")\}|(?<=[ \t\]])(?!\{)([^$\n]*)(?=[$\n]))" + _BOX_GAP
    )


_STEP_RE = re.compile(_step_pattern(), re.S)
# Longer steps go the general way (a failed regex match costs more).
_MAX_REGEX_STEP = 4096
_MAX_JOINED_BOXES = 16
_MAX_DECIDED = 4096  # steps remembered by `_boxed_answer`


def _joined_box(text: str, start: int, end: int) -> str | None:
    """The stripped content of the box whose command ends at `start` when only
    a gap (`_BOX_GAP`) lies between the box and `end`; None when the box is
    unclosed, empty, runs past `end`, or words stand between."""
    if end - start <= _MAX_REGEX_STEP:
        m = _STEP_RE.fullmatch(text, start, end)
        if m:
            braced, unbraced = m.group(1, 2)
            return (braced if unbraced is None else unbraced).strip() or None
    content, after = _box_content(text, start)
    if content is None or after > end or not _BOX_GAP_RE.fullmatch(text, after, end):
        return None
    return content.strip() or None


def _run_start(text: str, start: int, end: int) -> int:
    """Where the copies of text[start:end] written right before it begin."""
    unit = block = text[start:end]
    while start >= len(block) and text.startswith(block, start - len(block)):
        start -= len(block)
        block += block
    while len(block) > len(unit):
        block = block[: len(block) // 2]
        if start >= len(block) and text.startswith(block, start - len(block)):
            start -= len(block)
    return start


def last_box(text: str) -> str | None:
    """The content of the last `\\boxed{}` / `\\fbox{}` alone, or None.

    How a gold is read from a reference solution (docs/recipe.md,
    "Evaluation"): MATH500 writes "\\boxed{15\\frac{39}{40}}, or
    \\boxed{\\frac{639}{40}}" and its answer is the last of the two.
    """
    window = _Commands(text, _BOX_COMMANDS["boxed"]).window(len(text))
    if not window:
        return None
    return (_box_content(text, window[-1][1])[0] or "").strip() or None


def _boxed_answer(text: str, commands: tuple[str, ...]) -> str | None:
    """The last box's content, joined with the boxes just before it.

    Boxes separated only by commas, "and", "or", spacing or `$` state one
    answer together: "\\boxed{4} and \\boxed{9}" is the list "4, 9", and a
    hedge "\\boxed{5} or \\boxed{6}" is the list "5, 6", never just 6. A box
    further back, with words between, is a step of the working and is left
    out. Repeated contents count once.

    Linear in the length of the text: the commands are found in one pass
    backwards (`_Commands`), and each box is read once (by one regex,
    `_STEP_RE`, but for unusual ones). A step depends on the text from its
    box to the next one alone, so a step seen before is looked up, and copies
    of the same box and gap written in a row are passed together
    (`_run_start`).
    """
    commands_before = _Commands(text, commands)
    window = commands_before.window(len(text))
    if not window:
        return None
    pos, start = window.pop()
    content = (_box_content(text, start)[0] or "").strip()
    if not content:
        return None
    contents = [content]
    decided: dict[str, str] = {}  # text[prev:pos] -> the box's content
    last = ""
    while len(contents) < _MAX_JOINED_BOXES:
        if not window:
            window = commands_before.window(pos)
            if not window:
                break
        prev, start = window.pop()
        unit = text[prev:pos]
        content = decided.get(unit)
        if content is None:
            content = _joined_box(text, start, pos)
            if content is None:
                break  # unclosed, empty, around the one we have, or words between
            if len(decided) < _MAX_DECIDED:
                decided[unit] = content
            if content not in contents:
                contents.append(content)
        elif unit == last:  # the same box and gap again: pass all the copies
            prev = _run_start(text, prev, pos)
            del window[bisect.bisect_left(window, (prev,)) :]
        last, pos = unit, prev
    return ", ".join(reversed(contents))


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = collections.deque(pattern.finditer(text), maxlen=1)  # at C speed
    return last[0] if last else None


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
    # No number contains a character `_NOT_NUMBER_RE` matches, so a scan that
    # starts or ends just after one finds the numbers that a scan of the whole
    # text finds there: scan back from the end in spans that double.
    end, size = len(text), 4096
    while True:
        start = max(0, end - size)
        if start:
            stop = _NOT_NUMBER_RE.search(text, start, end)
            if stop is None:  # all in one number: look further back
                size *= 2
                continue
            start = stop.end()
        last = None
        if _DIGIT_RE.search(text, start, end):  # a faster scan than for numbers
            last = collections.deque(_NUMBER_RE.finditer(text, start, end), maxlen=1)
        if last:
            return last[0].group().replace(",", "")
        if start == 0:
            return None
        end, size = start, 2 * size


def after_thinking(response: str) -> str | None:
    """The part of `response` that the think rule grades, or None.

    The rule of the 1-shot RLVR reference for DeepSeek-R1-Distill (rllm /
    DeepScaleR's reward, used for its training reward and validation): the
    graded text is what follows the first `</think>`, up to a second one if
    there is one (the reference keeps piece 1 of a split on `</think>`), and
    a text without both `<think>` and `</think>` scores 0. The reference
    tests the prompt and the response decoded together; R1's chat template
    ends the prompt with `<think>` and a newline, so `<think>` is always there
    and the first `</think>` is the response's. This function sees the
    response alone and needs only `</think>`: the same decision for prompts
    that open the thinking. (Under a prompt that does not, it would also
    grade a response that closes a thinking it never opened, which the
    reference scores 0; a model that opens its own thinking writes `<think>`
    first, and then both agree.)

    Args:
      response: the model's response (without the prompt).

    Returns:
      The text after the first `</think>` and before a second one, or None
      when the response never closes its thinking.
    """
    if not isinstance(response, str):
        return None
    start = response.find(THINK_END)
    if start < 0:
        return None
    start += len(THINK_END)
    end = response.find(THINK_END, start)
    return response[start:] if end < 0 else response[start:end]


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

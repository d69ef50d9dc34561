"""String-level normalisation of an answer: notation that never changes a value.

Runs before the lexer: removes `$`, sizing (`\\left`, `\\big`), spacing and
display-style commands, degree and percent marks, currency; maps `\\dfrac` /
`\\tfrac` to `\\frac`; joins thousands written `1{,}000`, `1\\,000` or
`1,\\!000`; maps the Unicode math a model may emit to LaTeX.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Unicode a model may emit instead of LaTeX. Applied before NFKC, which would
# otherwise turn "x²" into "x2" and "ℝ" into the letter R.
_UNICODE = str.maketrans(
    {
        "\u2212": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u00d7": r" \times ",
        "\u00b7": r" \cdot ",
        "\u22c5": r" \cdot ",
        "\u00f7": r" \div ",
        "\u03c0": r" \pi ",
        "\u221a": r"\sqrt",
        "\u221e": r" \infty ",
        "\u2264": r" \leq ",
        "\u2265": r" \geq ",
        "\u2260": r" \neq ",
        "\u00b1": r" \pm ",
        "\u2213": r" \mp ",
        "\u222a": r" \cup ",
        "\u2229": r" \cap ",
        "\u2208": r" \in ",
        "\u2205": r" \emptyset ",
        "\u00b0": r"^\circ",
        "\u00b2": "^2",
        "\u00b3": "^3",
        "\u00b9": "^1",
        "\u00bd": r"\frac{1}{2}",
        "\u00bc": r"\frac{1}{4}",
        "\u00be": r"\frac{3}{4}",
        "\u211d": r"\mathbb{R}",
        "\u03b1": r" \alpha ",
        "\u03b2": r" \beta ",
        "\u03b3": r" \gamma ",
        "\u03b4": r" \delta ",
        "\u03b8": r" \theta ",
        "\u03bb": r" \lambda ",
        "\u03bc": r" \mu ",
        "\u03c3": r" \sigma ",
        "\u03c6": r" \phi ",
        "\u03c9": r" \omega ",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
    }
)

# Ordered (pattern, replacement) rewrites. Each removes notation that does not
# change the value: sizing, spacing, font, display style, degree and percent
# marks, currency.
_REWRITES = [
    (re.compile(r"\\\$"), ""),
    (re.compile(r"\$"), " "),
    (re.compile(r"\\[()\[\]]"), " "),
    (re.compile(r"\\(?:left|right)\s*\.(?![0-9])"), " "),
    (re.compile(r"\\(?:left|right|middle)(?![a-zA-Z])"), ""),
    (re.compile(r"\\[bB]igg?[lr]?(?![a-zA-Z])"), ""),
    (re.compile(r"\\(?:display|text|script)style(?![a-zA-Z])"), ""),
    # Thousands separators: 1{,}000 and 1\,000 (a thin space between groups).
    (re.compile(r"(?<=\d)\{,\}(?=\d)"), ""),
    (re.compile(r"(?<=\d)\\[,;!: ](?=\d{3}(?!\d))"), ""),
    # 1,\!234 and 11,\! 111: a comma kept tight by \! (MATH's style).
    (re.compile(r"(?<=\d),\\!\s*(?=\d{3}(?!\d))"), ","),
    (re.compile(r"\\!"), ""),
    (re.compile(r"\\[,;: ]|~|\\q?quad(?![a-zA-Z])"), " "),
    (re.compile(r"\\hspace\*?\{[^{}]*\}"), " "),
    (re.compile(r"\\[dtc]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\\[dt]binom(?![a-zA-Z])"), r"\\binom"),
    # Degrees, optionally followed by a Celsius/Fahrenheit letter.
    (
        re.compile(
            r"\^\s*\{?\s*\\circ\s*\}?(?:\s*(?:\\mathrm\{[CF]\}|\\text\{[CF]\}|[CF](?![a-zA-Z])))?"
        ),
        "",
    ),
    (re.compile(r"\\(?:text)?degrees?(?![a-zA-Z])"), ""),
    (re.compile(r"\^\s*\{\s*\\prime\s*\}|\^\s*\\prime(?![a-zA-Z])"), "'"),
    (re.compile(r"\^\s*\{\s*\\prime\s*\\prime\s*\}"), "''"),
    (re.compile(r"\\%|%"), ""),
]

_EDGE_PUNCT_RE = re.compile(r"^[\s:=]+|[\s.,;:]+$")


def normalize(text: str) -> str:
    """Rewrites notation that never changes an answer's value.

    Removes `$`, `\\left`/`\\right`, spacing commands, `\\displaystyle`,
    degree and percent marks, escaped dollars; maps `\\dfrac`/`\\tfrac` to
    `\\frac`; joins thousands written as `1{,}000` or `1\\,000`; maps common
    Unicode math symbols to LaTeX; strips edge punctuation.

    Args:
      text: an answer string (not a whole response).

    Returns:
      The normalised string; it may be empty.
    """
    s = _CONTROL_RE.sub("", text)
    s = s.replace("\n", " ").replace("\r", " ").replace("\t", " ")
    s = s.translate(_UNICODE)
    s = unicodedata.normalize("NFKC", s)
    # Shield the row separator \\ from the rewrites of \, \; \( and friends.
    s = s.replace("\\\\", "\x01")
    for pattern, replacement in _REWRITES:
        s = pattern.sub(replacement, s)
    s = s.replace("\x01", "\\\\")
    prev = None
    while prev != s:
        prev = s
        s = _EDGE_PUNCT_RE.sub("", s)
    return s

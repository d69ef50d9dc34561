"""Normalise and parse the LaTeX of a final answer into a small, inert tree.

Model output is untrusted, so nothing here evaluates text: a whitelisted
tokenizer turns the answer into tokens (digits, single letters, a fixed table of
LaTeX commands, a few operators; anything else is an error), and a recursive
descent parser builds plain tuples from them. The tree is evaluated later by
`rlvr_jax.checker`, with explicit size guards, never by `eval`, `sympify` or a
parser that runs Python.

Nodes are tuples whose first item names the kind:

    ("num", Fraction, is_decimal)      a literal; decimals are exact fractions
    ("based", digits, base, value)     52_8, a number written in base 8
    ("sym", name)                      a variable: x, x_1, \\theta
    ("const", name)                    pi, e, i (imaginary unit), oo
    ("add", terms) ("mul", factors)    n-ary; subtraction is ("neg", x)
    ("neg", x) ("div", a, b) ("pow", a, b)
    ("func", name, args)               sin, log, sqrt, abs, fact, binom, ...
    ("pm", a, b)                       a ± b (a may be None for ±b)
    ("call", name, args)               f(x) on the left of "="
    ("list", items)                    a bare, unordered list: "1, 2" or "1 or 2"
    ("seq", open, close, items)        a bracketed tuple or interval: (1, 2], <1, 2>
    ("set", items)                     \\{1, 2\\}
    ("union", items)                   A \\cup B
    ("mat", rows)                      pmatrix / bmatrix / matrix / array
    ("rel", ops, operands)             x = 3, 1 < x \\leq 2, x \\in [0, 1]
    ("text", words)                    a word answer, case-folded
"""

from __future__ import annotations

import functools
import re
import unicodedata
from fractions import Fraction

# Limits applied before any work that grows with the input. Real final answers
# are far below them; anything above is rejected, not truncated.
MAX_CHARS = 1500
MAX_TOKENS = 800
MAX_DEPTH = 40
MAX_DIGITS = 400
MAX_ITEMS = 64


class LatexError(ValueError):
    """The text is not an answer this grammar accepts."""


# --------------------------------------------------------------------------
# String-level normalisation
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"(?P<ws>\s+)"
    r"|(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+(?![a-zA-Z\d]))?)"
    r"|(?P<cmd>\\[a-zA-Z]+)"
    r"|(?P<esc>\\[{}|\\])"
    r"|(?P<word>[^\W\d_]+)"
    r"|(?P<op><=|>=|!=|[-+*/^_!=<>,;|&'()\[\]{}:])"
)

_GREEK = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa "
    "lambda mu nu xi omicron rho varrho sigma varsigma tau upsilon phi varphi chi "
    "psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega ell hbar "
    "mho nabla angle triangle odot".split()
)

_FUNCS = {
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "cot": "cot",
    "sec": "sec",
    "csc": "csc",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "sinh": "sinh",
    "cosh": "cosh",
    "tanh": "tanh",
    "log": "log",
    "ln": "ln",
    "lg": "log10",
    "exp": "exp",
    "gcd": "gcd",
    "lcm": "lcm",
    "max": "max",
    "min": "min",
}

_INVERSE = {"sin": "asin", "cos": "acos", "tan": "atan"}

# Command -> (token kind, value).
_COMMANDS = {
    "frac": ("cmd", "frac"),
    "sqrt": ("cmd", "sqrt"),
    "binom": ("cmd", "binom"),
    "overline": ("cmd", "overline"),
    "pi": ("const", "pi"),
    "infty": ("const", "oo"),
    "infin": ("const", "oo"),
    "cdot": ("op", "*"),
    "times": ("op", "*"),
    "ast": ("op", "*"),
    "div": ("op", "/"),
    "pm": ("op", "pm"),
    "mp": ("op", "mp"),
    "cup": ("op", "cup"),
    "in": ("op", "in"),
    "leq": ("op", "<="),
    "le": ("op", "<="),
    "leqslant": ("op", "<="),
    "geq": ("op", ">="),
    "ge": ("op", ">="),
    "geqslant": ("op", ">="),
    "neq": ("op", "!="),
    "ne": ("op", "!="),
    "lt": ("op", "<"),
    "gt": ("op", ">"),
    "approx": ("op", "="),
    "lfloor": ("op", "lfloor"),
    "rfloor": ("op", "rfloor"),
    "lceil": ("op", "lceil"),
    "rceil": ("op", "rceil"),
    "vert": ("op", "|"),
    "lvert": ("op", "|"),
    "rvert": ("op", "|"),
    "mid": ("op", "|"),
    "langle": ("op", "langle"),
    "rangle": ("op", "rangle"),
    "emptyset": ("empty", None),
    "varnothing": ("empty", None),
    "limits": ("skip", None),
    "nolimits": ("skip", None),
}

# Font and text commands whose braced argument is read by the tokenizer.
_MATH_FONTS = frozenset("mathbf mathit mathsf mathtt boldsymbol bm mathnormal".split())
_TEXT_CMDS = frozenset(
    "text textbf textit textrm textsf texttt textup textnormal mbox hbox emph "
    "mathrm operatorname".split()
)
_CONNECTORS = frozenset({"or", "and", ",", "or,", "and,", ";"})
_ACCENTS = frozenset("dot ddot hat bar vec tilde widehat widetilde".split())
_MATRIX_ENVS = frozenset("pmatrix bmatrix Bmatrix matrix smallmatrix array".split())

# Words that may follow a number as a unit (compared case-insensitively). Words
# of four or more letters are treated as text anyway; this list is for the
# short ones that would otherwise read as a product of variables.
_UNIT_WORDS = frozenset(
    "cm mm km nm um kg mg ml mph kph ft yd mi hr hrs min mins sec secs lb lbs oz "
    "cal gal deg rad hz khz mhz ev kev mev pa kpa atm mol sq yr yrs am pm usd cents "
    "in s per".split()
)
# Short words that are answers in their own right, not products of variables.
_SHORT_WORDS = frozenset("yes no odd all one two six ten none not".split())
# Letters text content may hold and still be read as math: "(A)", "(113)", "5".
_NUMBER_FIRST_RE = re.compile(r"[-+]?\d[\d.,]*\s+[^\W\d_]{2,}(\s+[^\W\d_]+)*$")
_MATHY_TEXT_RE = re.compile(r"[\d\s.,+\-()/]+|\s*\(?\s*[A-Za-z]\s*\)?\s*")


def _read_group(s: str, pos: int) -> tuple[str, int]:
    """Returns the content of the braced group at s[pos] and the index after it."""
    while pos < len(s) and s[pos] == " ":
        pos += 1
    if pos >= len(s) or s[pos] != "{":
        raise LatexError("expected a braced argument")
    depth = 0
    i = pos
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return s[pos + 1 : i], i + 1
        i += 1
    raise LatexError("unbalanced braces")


def _num_token(raw: str, space: bool) -> tuple:
    digits = sum(ch.isdigit() for ch in raw)
    if digits > MAX_DIGITS:
        raise LatexError("number literal too long")
    return ("num", raw, space)


def tokenize(s: str) -> list[tuple]:
    """Splits a normalised answer into whitelisted tokens.

    Each token is `(kind, value, space_before)`. Kinds: num, letter, sym,
    const, cmd, func, op, text, word, sep, empty, reals, begin, end, rowsep.

    Args:
      s: a normalised answer string.

    Returns:
      The token list.

    Raises:
      LatexError: on any character or command outside the whitelist, or when
        a size limit is exceeded.
    """
    out: list[tuple] = []
    _tokenize_into(s, out, 0)
    return out


def _tokenize_into(s: str, out: list, level: int) -> None:
    if level > 4:
        raise LatexError("text nested too deeply")
    pos = 0
    n = len(s)
    space = False
    depth = 0
    while pos < n:
        if len(out) > MAX_TOKENS:
            raise LatexError("too many tokens")
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            raise LatexError(f"unexpected character {s[pos]!r}")
        kind = m.lastgroup
        raw = m.group()
        pos = m.end()
        if kind == "ws":
            space = True
            continue
        if kind == "num":
            out.append(_num_token(raw, space))
        elif kind == "word":
            _word_tokens(raw, space, out)
        elif kind == "op":
            if raw in "([{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise LatexError("nested too deeply")
            elif raw in ")]}":
                depth -= 1
            out.append(("op", raw, space))
        elif kind == "esc":
            c = raw[1]
            if c == "\\":
                out.append(("rowsep", None, space))
            elif c == "|":
                raise LatexError("norms are not supported")
            else:
                out.append(("op", raw, space))
        else:
            pos = _command_tokens(s, pos, raw[1:], space, out, level)
        space = False


def _word_tokens(raw: str, space: bool, out: list) -> None:
    low = raw.casefold()
    if len(raw) == 1 and raw.isascii():
        out.append(("letter", raw, space))
    elif low in ("or", "and"):
        out.append(("sep", low, space))
    elif raw in _FUNCS or raw == "sqrt":
        out.append(("func", raw, space) if raw in _FUNCS else ("cmd", "sqrt", space))
    elif raw == "pi":
        out.append(("const", "pi", space))
    elif not raw.isascii():
        out.append(("text", raw, space))
    else:
        out.append(("word", raw, space))


def _command_tokens(
    s: str, pos: int, name: str, space: bool, out: list, level: int
) -> int:
    """Appends the tokens of command `name`; returns the position after it."""
    if name in _COMMANDS:
        kind, value = _COMMANDS[name]
        if kind != "skip":
            out.append((kind, value, space))
        return pos
    if name in _FUNCS:
        out.append(("func", name, space))
        return pos
    if name in _GREEK:
        out.append(("sym", name, space))
        return pos
    if name in _MATH_FONTS:
        content, pos = _read_group(s, pos)
        _tokenize_into(content, out, level + 1)
        return pos
    if name in _TEXT_CMDS:
        content, pos = _read_group(s, pos)
        _text_tokens(content, name, space, out, level)
        return pos
    if name in _ACCENTS:
        # \dot{x}, \hat{v}: a variable of its own, named after both.
        content, pos = _read_group(s, pos)
        inner: list[tuple] = []
        _tokenize_into(content, inner, level + 1)
        if len(inner) != 1 or inner[0][0] not in ("letter", "sym"):
            raise LatexError(f"unsupported \\{name} argument")
        out.append(("sym", f"{name}{{{inner[0][1]}}}", space))
        return pos
    if name == "mathbb":
        content, pos = _read_group(s, pos)
        content = content.strip()
        if content == "R":
            out.append(("reals", None, space))
        elif len(content) == 1 and content.isalpha():
            out.append(("sym", "mathbb" + content, space))
        else:
            raise LatexError("unsupported \\mathbb argument")
        return pos
    if name in ("begin", "end"):
        env, pos = _read_group(s, pos)
        env = env.strip().rstrip("*")
        if env not in _MATRIX_ENVS:
            raise LatexError(f"unsupported environment {env}")
        if name == "begin" and env == "array":
            _, pos = _read_group(s, pos)  # column spec, e.g. {cc}
        out.append((name, env, space))
        return pos
    raise LatexError(f"unsupported command \\{name}")


def _text_tokens(content: str, name: str, space: bool, out: list, level: int) -> None:
    stripped = content.replace("~", " ").strip()
    if not stripped:
        return
    if stripped.casefold() in _CONNECTORS:
        out.append(("sep", stripped.casefold().rstrip(","), space))
        return
    if name in ("mathrm", "operatorname") and stripped in _FUNCS:
        out.append(("func", stripped, space))
        return
    if stripped.isalpha() and content[:1] in (" ", "~"):
        # "5\text{ m}", "5\mathrm{~cm}": a spaced-off word is a unit.
        out.append(("text", stripped, space))
        return
    if _MATHY_TEXT_RE.fullmatch(stripped) or _NUMBER_FIRST_RE.match(stripped):
        # "(C)", "(113)", "12.8 mph": math, with any words read as units.
        _tokenize_into(stripped, out, level + 1)
        return
    out.append(("text", stripped, space))


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------

_EOF = ("eof", None, False)
_RELOPS = frozenset({"=", "<", ">", "<=", ">=", "!=", "in"})
_PRIMARY_START_KINDS = frozenset(
    {"num", "letter", "sym", "const", "cmd", "func", "begin", "reals", "empty"}
)


def _is_unit_word(tok: tuple) -> bool:
    kind, value, _ = tok
    if kind == "text":
        return True
    if kind == "word":
        if value.isupper():  # an acronym such as SRMC is a product of symbols
            return False
        return len(value) >= 4 or value.casefold() in _UNIT_WORDS
    return False


def _num_value(raw: str) -> tuple[Fraction, bool]:
    """Exact value of a numeric literal and whether it was written as a decimal."""
    mant, _, exp = raw.lower().partition("e")
    if mant.endswith("."):
        mant = mant[:-1]
    try:
        value = Fraction(mant)
    except ValueError:
        raise LatexError(f"bad number {raw!r}") from None
    is_decimal = "." in raw or bool(exp)
    if exp:
        e = int(exp)
        if abs(e) > MAX_DIGITS:
            raise LatexError("exponent too large")
        value *= Fraction(10) ** e
    return value, is_decimal


def _num(value, is_decimal=False) -> tuple:
    return ("num", Fraction(value), is_decimal)


def _mul(factors: list) -> tuple:
    flat = []
    for f in factors:
        if f[0] == "mul":
            flat.extend(f[1])
        else:
            flat.append(f)
    return flat[0] if len(flat) == 1 else ("mul", tuple(flat))


def _add(terms: list) -> tuple:
    flat = []
    for t in terms:
        if t[0] == "add":
            flat.extend(t[1])
        else:
            flat.append(t)
    return flat[0] if len(flat) == 1 else ("add", tuple(flat))


class _Parser:
    """Recursive descent over the token list; builds the tuple tree."""

    def __init__(self, tokens: list[tuple]):
        self.toks = _merge_thousands(tokens)
        self.i = 0
        self.depth = 0
        self.abs_depth = 0
        self.element_start = 0

    # -- token helpers -----------------------------------------------------
    def peek(self, k: int = 0) -> tuple:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else _EOF

    def take(self) -> tuple:
        tok = self.peek()
        self.i += 1
        return tok

    def at_op(self, *values: str) -> bool:
        kind, value, _ = self.peek()
        return kind == "op" and value in values

    def expect_op(self, value: str) -> None:
        if not self.at_op(value):
            raise LatexError(f"expected {value!r}, got {self.peek()[1]!r}")
        self.i += 1

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise LatexError("expression nested too deeply")

    # -- grammar -------------------------------------------------------------
    def parse_answer(self) -> tuple:
        items = self.parse_items(closers=())
        if self.peek() is not _EOF:
            raise LatexError(f"unexpected {self.peek()[1]!r}")
        return items[0] if len(items) == 1 else ("list", tuple(items))

    def parse_items(self, closers: tuple) -> list:
        items = [self.parse_element()]
        while True:
            kind, value, _ = self.peek()
            if kind == "sep" or (kind == "op" and value in (",", ";")):
                self.i += 1
                if self.peek() is _EOF or self.at_op(*closers):
                    break  # a trailing separator, "1, 2,"
                items.append(self.parse_element())
                if len(items) > MAX_ITEMS:
                    raise LatexError("too many items")
            else:
                return items
        return items

    def skip_units(self) -> None:
        """Drops unit words and prose around a value: 5 \\text{cm}^2, 12 mph."""
        while _is_unit_word(self.peek()):
            self.i += 1
            if self.at_op("^"):
                self.i += 1
                self.parse_script()
            if self.at_op("/", "*") and _is_unit_word(self.peek(1)):
                self.i += 1

    def parse_element(self) -> tuple:
        self.skip_units()
        if self.at_op("="):  # "\text{Area} = 12": the label was dropped
            self.i += 1
        self.element_start = self.i
        node = self.parse_relation()
        self.skip_units()
        return node

    def parse_relation(self) -> tuple:
        operands = [self.parse_union()]
        ops = []
        while True:
            kind, value, _ = self.peek()
            if kind == "op" and value in _RELOPS:
                self.i += 1
                ops.append(value)
                operands.append(self.parse_union())
            else:
                break
        if not ops:
            return operands[0]
        return ("rel", tuple(ops), tuple(operands))

    def parse_union(self) -> tuple:
        items = [self.parse_sum()]
        while self.at_op("cup"):
            self.i += 1
            items.append(self.parse_sum())
        return items[0] if len(items) == 1 else ("union", tuple(items))

    def parse_sum(self) -> tuple:
        terms = [self.parse_term()]
        while True:
            kind, value, _ = self.peek()
            if kind != "op" or value not in ("+", "-", "pm", "mp"):
                break
            self.i += 1
            term = self.parse_term()
            if value == "+":
                terms.append(term)
            elif value == "-":
                terms.append(("neg", term))
            else:
                terms = [("pm", _add(terms), term)]
        return _add(terms)

    def parse_term(self) -> tuple:
        self.enter()
        kind, value, _ = self.peek()
        if kind == "op" and value in ("-", "+", "pm", "mp"):
            self.i += 1
            inner = self.parse_term()
            self.depth -= 1
            if value == "-":
                return ("neg", inner)
            if value == "+":
                return inner
            return ("pm", None, inner)
        factors = [self.parse_mixed_or_postfix()]
        while True:
            if self.at_op("*"):
                self.i += 1
                factors.append(self.parse_signed_factor())
            elif self.at_op("/", ":"):
                self.i += 1
                factors = [("div", _mul(factors), self.parse_signed_factor())]
            elif self.starts_implicit_factor():
                factors.append(self.parse_postfix())
            else:
                break
        self.depth -= 1
        return _mul(factors)

    def parse_signed_factor(self) -> tuple:
        if self.at_op("-"):
            self.i += 1
            return ("neg", self.parse_signed_factor())
        if self.at_op("+"):
            self.i += 1
        return self.parse_postfix()

    def starts_implicit_factor(self) -> bool:
        kind, value, _ = self.peek()
        if kind in _PRIMARY_START_KINDS:
            return True
        if kind == "word":
            return not _is_unit_word(self.peek())
        if kind == "op":
            if value == "|":
                return self.abs_depth == 0
            if value == "[":
                return self.bracket_is_group()
            return value in ("(", "lfloor", "lceil", "{")
        return False

    def bracket_is_group(self) -> bool:
        """Whether the "[" ahead closes with "]" and holds no top-level comma."""
        depth = 0
        for kind, value, _ in self.toks[self.i :]:
            if kind != "op":
                continue
            if value in ("(", "[", "{", "\\{"):
                depth += 1
            elif value in (")", "]", "}", "\\}"):
                depth -= 1
                if depth == 0:
                    return value == "]"
            elif value == "," and depth == 1:
                return False
        return False

    def parse_mixed_or_postfix(self) -> tuple:
        """A mixed number (2\\frac{1}{3}, "2 1/3") or an ordinary factor."""
        tok = self.peek()
        if tok[0] == "num" and tok[1].isdigit():
            nxt = self.peek(1)
            if nxt[0] == "cmd" and nxt[1] == "frac":
                mixed = self.try_mixed_frac()
                if mixed is not None:
                    return mixed
            if (
                nxt[0] == "num"
                and nxt[2]
                and nxt[1].isdigit()
                and self.peek(2)[:2] == ("op", "/")
                and self.peek(3)[0] == "num"
                and self.peek(3)[1].isdigit()
            ):
                whole, top, bottom = int(tok[1]), int(nxt[1]), int(self.peek(3)[1])
                if bottom and 0 < top < bottom:
                    self.i += 4
                    return _num(whole + Fraction(top, bottom))
        return self.parse_postfix()

    def try_mixed_frac(self) -> tuple | None:
        start = self.i
        whole = int(self.take()[1])
        self.i += 1  # \frac
        top = self.parse_frac_arg()
        bottom = self.parse_frac_arg()
        if (
            top[0] == "num"
            and bottom[0] == "num"
            and not top[2]
            and not bottom[2]
            and top[1].denominator == 1
            and bottom[1].denominator == 1
            and 0 < top[1] < bottom[1]
            and not self.at_op("^")
        ):
            return _num(whole + top[1] / bottom[1])
        self.i = start
        return None

    def parse_postfix(self) -> tuple:
        node = self.parse_primary()
        while True:
            if self.at_op("!"):
                self.i += 1
                node = ("func", "fact", (node,))
            elif self.at_op("^"):
                self.i += 1
                node = ("pow", node, self.parse_script())
            elif self.at_op("'") and node[0] == "sym":
                self.i += 1
                node = ("sym", node[1] + "'")
            else:
                return node

    def parse_script(self) -> tuple:
        """The argument of ^: a group, or one token (a whole number, per intent)."""
        self.enter()
        kind, value, _ = self.peek()
        if kind == "op" and value == "{":
            node = self.parse_group("{", "}")
        elif kind == "op" and value == "-":
            self.i += 1
            node = ("neg", self.parse_script())
        elif kind == "op" and value == "(":
            node = self.parse_primary()
        elif kind == "num":
            self.i += 1
            node = _num(*_num_value(value))
        elif kind in ("letter", "sym", "const", "cmd", "func"):
            node = self.parse_primary()
        else:
            raise LatexError("bad exponent")
        self.depth -= 1
        return node

    def parse_frac_arg(self) -> tuple:
        """An argument of \\frac or \\binom: a group or a single digit/letter."""
        kind, value, space = self.peek()
        if kind == "op" and value == "{":
            return self.parse_group("{", "}")
        if kind == "num":
            self.i += 1
            if len(value) > 1 and value[:2].isdigit():
                # \frac12 is \frac{1}{2}: a bare argument is one character.
                self.toks.insert(self.i, ("num", value[1:], False))
                value = value[0]
            return _num(*_num_value(value))
        if kind in ("letter", "sym", "const", "cmd") or (kind, value) == ("op", "("):
            return self.parse_primary()
        raise LatexError("bad \\frac argument")

    def parse_group(self, opener: str, closer: str) -> tuple:
        self.expect_op(opener)
        self.enter()
        items = self.parse_items(closers=(closer,))
        self.expect_op(closer)
        self.depth -= 1
        return items[0] if len(items) == 1 else ("list", tuple(items))

    def parse_primary(self) -> tuple:
        self.enter()
        node = self._primary()
        self.depth -= 1
        return node

    def _primary(self) -> tuple:
        kind, value, _ = tok = self.take()
        if kind == "num":
            return self.finish_number(value)
        if kind == "letter":
            return self.finish_letter(value)
        if kind == "sym":
            return ("sym", value + self.subscript())
        if kind == "const":
            return ("const", value)
        if kind == "reals":
            return ("seq", "(", ")", (("neg", ("const", "oo")), ("const", "oo")))
        if kind == "empty":
            return ("set", ())
        if kind == "word":
            if _is_unit_word(tok) or (
                not value.isupper() and value.casefold() in _SHORT_WORDS
            ):
                raise LatexError(f"word {value!r} inside an expression")
            factors = [self.finish_letter(c, subscript=False) for c in value]
            return _mul(factors)
        if kind == "func":
            return self.finish_function(_FUNCS.get(value, value))
        if kind == "cmd":
            return self.finish_command(value)
        if kind == "begin":
            return self.finish_matrix(value)
        if kind == "op":
            return self.finish_bracket(value)
        raise LatexError(f"unexpected {value!r}")

    def finish_number(self, raw: str) -> tuple:
        value, is_decimal = _num_value(raw)
        nxt = self.peek()
        if nxt[:2] == ("op", "_") and raw.isdigit():
            # 52_8: digits in base 8, kept apart from the decimal 52.
            base_text = self.subscript()[1:].strip("{}").strip()
            if not base_text.isdigit() or not 2 <= int(base_text) <= 36:
                raise LatexError("bad number base")
            base = int(base_text)
            if any(int(d) >= base for d in raw):
                raise LatexError(f"digit out of range for base {base}")
            return ("based", raw.lstrip("0") or "0", base, Fraction(int(raw, base)))
        if nxt[:2] == ("cmd", "overline") and "." in raw and "e" not in raw.lower():
            # 0.1\overline{6}: an exact repeating decimal. The digits are read
            # raw so that the leading zero of \overline{09} counts.
            group = self.toks[self.i + 1 : self.i + 4]
            if (
                len(group) != 3
                or group[0][:2] != ("op", "{")
                or group[1][0] != "num"
                or not group[1][1].isdigit()
                or group[2][:2] != ("op", "}")
            ):
                raise LatexError("bad repeating decimal")
            self.i += 4
            rep = group[1][1]
            body = raw.split(".")[1]
            value += Fraction(int(rep), 10 ** len(rep) - 1) / 10 ** len(body)
            return ("num", value, False)
        return ("num", value, is_decimal)

    def subscript(self) -> str:
        """The raw text of a subscript, part of a variable's name: x_1, v_{red}."""
        if not self.at_op("_"):
            return ""
        self.i += 1
        kind, value, _ = self.peek()
        if kind == "op" and value == "{":
            depth = 0
            parts = []
            while True:
                kind, value, _ = self.take()
                if kind == "eof":
                    raise LatexError("unclosed subscript")
                if kind == "op" and value == "{":
                    depth += 1
                elif kind == "op" and value == "}":
                    depth -= 1
                    if depth == 0:
                        break
                parts.append(str(value))
            inner = parts[1:]
            if len(inner) == 1:  # x_{1} is x_1
                return "_" + inner[0]
            return "_{" + " ".join(inner) + "}"
        if kind in ("num", "letter", "sym", "word"):
            self.i += 1
            return "_" + str(value)
        raise LatexError("bad subscript")

    def finish_letter(self, letter: str, subscript: bool = True) -> tuple:
        sub = self.subscript() if subscript else ""
        if sub:
            return ("sym", letter + sub)
        if letter == "e":
            return ("const", "e")
        if letter == "i":
            return ("const", "i")
        if (
            subscript
            and self.i - 1 == self.element_start
            and self.at_op("(")
            and not self.peek()[2]
        ):
            call = self.try_call(letter)
            if call is not None:
                return call
        return ("sym", letter)

    def try_call(self, name: str) -> tuple | None:
        """f(x) = ...: a function being defined, not f times x.

        Only the whole left-hand side of an equation is read this way.
        """
        depth = 0
        j = self.i
        while j < len(self.toks):
            kind, value, _ = self.toks[j]
            if kind == "op" and value in ("(", "[", "{"):
                depth += 1
            elif kind == "op" and value in (")", "]", "}"):
                depth -= 1
                if depth == 0:
                    break
            j += 1
        after = self.toks[j + 1] if j + 1 < len(self.toks) else _EOF
        inner = self.toks[self.i + 1 : j]
        simple = all(
            t[0] in ("letter", "sym", "num") or t[:2] == ("op", ",") for t in inner
        )
        if after[:2] != ("op", "=") or not inner or not simple:
            return None
        self.i += 1
        args = self.parse_items(closers=(")",))
        self.expect_op(")")
        return ("call", name, tuple(args))

    def finish_function(self, name: str) -> tuple:
        power = None
        base = None
        if self.at_op("^"):
            self.i += 1
            power = self.parse_script()
        if name in ("log", "ln") and self.at_op("_"):
            self.i += 1
            base = self.parse_script()
        if self.at_op("("):
            self.i += 1
            self.enter()
            args = self.parse_items(closers=(")",))
            self.expect_op(")")
            self.depth -= 1
        elif self.at_op("{"):
            args = [self.parse_group("{", "}")]
        else:
            factors = []
            while self.starts_implicit_factor() and self.peek()[0] != "func":
                factors.append(self.parse_postfix())
            if not factors:
                raise LatexError(f"{name} without an argument")
            args = [_mul(factors)]
        if name in ("gcd", "lcm", "max", "min"):
            if len(args) == 1 and args[0][0] == "list":
                args = list(args[0][1])
            if len(args) < 2:
                raise LatexError(f"{name} needs two or more arguments")
        elif len(args) != 1:
            raise LatexError(f"{name} takes one argument")
        if name == "log" and base is not None:
            node = ("func", "log", (args[0], base))
        elif name == "ln":
            node = ("func", "log", (args[0],))
        elif name == "log10":
            node = ("func", "log", (args[0], _num(10)))
        else:
            node = ("func", name, tuple(args))
        if power is not None:
            if power == ("neg", _num(1)) and name in _INVERSE:
                return ("func", _INVERSE[name], tuple(args))
            node = ("pow", node, power)
        return node

    def finish_command(self, name: str) -> tuple:
        if name == "frac":
            top = self.parse_frac_arg()
            bottom = self.parse_frac_arg()
            return ("div", top, bottom)
        if name == "binom":
            top = self.parse_frac_arg()
            bottom = self.parse_frac_arg()
            return ("func", "binom", (top, bottom))
        if name == "sqrt":
            index = _num(2)
            if self.at_op("["):
                index = self.parse_group("[", "]")
            return ("func", "root", (self.parse_frac_arg(), index))
        raise LatexError(f"unexpected \\{name}")

    def finish_bracket(self, value: str) -> tuple:
        if value in ("(", "["):
            self.enter()
            items = self.parse_items(closers=(")", "]"))
            closer = self.take()
            if closer[0] != "op" or closer[1] not in (")", "]"):
                raise LatexError("unclosed bracket")
            self.depth -= 1
            if len(items) == 1 and (value, closer[1]) in (("(", ")"), ("[", "]")):
                return items[0]  # grouping, not a 1-tuple
            return ("seq", value, closer[1], tuple(items))
        if value == "{":
            self.i -= 1
            return self.parse_group("{", "}")
        if value == "\\{":
            if self.at_op("\\}"):
                self.i += 1
                return ("set", ())
            self.enter()
            items = self.parse_items(closers=("\\}",))
            self.expect_op("\\}")
            self.depth -= 1
            return ("set", tuple(items))
        if value == "langle":
            self.enter()
            items = self.parse_items(closers=("rangle",))
            self.expect_op("rangle")
            self.depth -= 1
            return ("seq", "<", ">", tuple(items))
        if value == "|":
            self.abs_depth += 1
            inner = self.parse_sum()
            self.abs_depth -= 1
            self.expect_op("|")
            return ("func", "abs", (inner,))
        if value in ("lfloor", "lceil"):
            inner = self.parse_sum()
            closer = "rfloor" if value == "lfloor" else "rceil"
            self.expect_op(closer)
            return ("func", "floor" if value == "lfloor" else "ceil", (inner,))
        raise LatexError(f"unexpected {value!r}")

    def finish_matrix(self, env: str) -> tuple:
        rows = []
        row = []
        self.enter()
        while True:
            kind, value, _ = self.peek()
            if kind == "end":
                if value != env:
                    raise LatexError("mismatched environment")
                self.i += 1
                break
            if kind == "eof":
                raise LatexError("unclosed environment")
            row.append(self.parse_sum())
            kind, value, _ = self.peek()
            if kind == "op" and value == "&":
                self.i += 1
            elif kind == "rowsep":
                self.i += 1
                rows.append(tuple(row))
                row = []
            if len(rows) > MAX_ITEMS or len(row) > MAX_ITEMS:
                raise LatexError("matrix too large")
        if row:
            rows.append(tuple(row))
        self.depth -= 1
        if not rows or any(len(r) != len(rows[0]) for r in rows):
            raise LatexError("ragged matrix")
        return ("mat", tuple(rows))


def _merge_thousands(tokens: list[tuple]) -> list[tuple]:
    """Joins 1,000,000 (no spaces, 3-digit groups) and "10 000" into one number.

    Only outside brackets (inside them a comma separates coordinates), and only
    when the whole comma-joined run fits the pattern: "27,54,108" is a list.
    """
    out: list[tuple] = []
    depth = 0
    i = 0
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        kind, value, space = tok
        if kind == "op" and value in ("(", "[", "{", "\\{"):
            depth += 1
        elif kind == "op" and value in (")", "]", "}", "\\}"):
            depth -= 1
        if depth == 0 and kind == "num" and value.isdigit():
            # The maximal run NUM,NUM,...,NUM with no spaces around the commas.
            parts = [value]
            j = i + 1
            while (
                j + 1 < n
                and tokens[j][:2] == ("op", ",")
                and not tokens[j][2]
                and tokens[j + 1][0] == "num"
                and not tokens[j + 1][2]
            ):
                parts.append(tokens[j + 1][1])
                j += 2
            if len(parts) == 1:
                # "10 000": space-separated 3-digit groups.
                while (
                    j < n
                    and tokens[j][0] == "num"
                    and tokens[j][2]
                    and _GROUP_RE.fullmatch(tokens[j][1])
                ):
                    parts.append(tokens[j][1])
                    j += 1
            thousands = (
                len(parts) > 1
                and len(parts[0]) <= 3
                and all(_GROUP_RE.fullmatch(p) for p in parts[1:-1])
                and _LAST_GROUP_RE.fullmatch(parts[-1])
            )
            if thousands:
                out.append(("num", "".join(parts), space))
                i = j
                continue
            if len(parts) > 1 and tokens[i + 1][:2] == ("op", ","):
                # A list such as 27,54,108: copy the run as it is.
                out.extend(tokens[i:j])
                i = j
                continue
        out.append(tok)
        i += 1
    return out


_GROUP_RE = re.compile(r"\d{3}")
_LAST_GROUP_RE = re.compile(r"\d{3}(\.\d+)?")


def _is_text_answer(tokens: list[tuple]) -> bool:
    """True when the answer is words only: "Monday", "\\text{even}", "no"."""
    has_word = False
    for kind, value, _ in tokens:
        if kind == "text":
            has_word = True
        elif kind == "word":
            if len(value) >= 4 or value.casefold() in _SHORT_WORDS:
                has_word = True
            elif value.casefold() not in _UNIT_WORDS:
                return False
        elif kind == "sep" or (kind == "op" and value in (",", ";", "(", ")")):
            continue
        else:
            return False
    return has_word


_TEXT_PUNCT_RE = re.compile(r"[\s.,;:!?()\"']+")


def text_key(text: str) -> str:
    """Case-folded words with punctuation and spacing collapsed."""
    return _TEXT_PUNCT_RE.sub(" ", text.casefold()).strip()


def parse(answer: str) -> tuple:
    """Parses a normalised answer into a tree (see the module docstring).

    Results, including failures, are cached: during training the same gold and
    many identical predictions are parsed over and over.

    Args:
      answer: an answer already passed through `normalize`.

    Returns:
      The tree, or ("error", message) when the answer is outside the grammar.
    """
    if not answer:
        return ("error", "empty answer")
    if len(answer) > MAX_CHARS:
        return ("error", "answer too long")  # checked before the cache sees it
    return _parse_cached(answer)


@functools.lru_cache(maxsize=8192)
def _parse_cached(answer: str) -> tuple:
    try:
        tokens = tokenize(answer)
        if _is_text_answer(tokens):
            words = " ".join(str(v) for k, v, _ in tokens if k in ("text", "word"))
            return ("text", text_key(words))
        return _Parser(tokens).parse_answer()
    except LatexError as err:
        return ("error", str(err))
    except RecursionError:
        return ("error", "expression nested too deeply")


def clear_cache() -> None:
    """Forgets cached parses (for benchmarks that time cold parsing)."""
    _parse_cached.cache_clear()

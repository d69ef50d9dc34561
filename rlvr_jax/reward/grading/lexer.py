"""Splits a normalised answer into whitelisted tokens.

Model output is untrusted, so the lexer is a whitelist: digits, single letters,
a fixed table of LaTeX commands and a few operators become tokens; any other
character or command is a `GrammarError`. Font and text commands are read here
(their braced argument is lexed again, or kept as a word), so the parser only
sees math.

Each token is `Token(kind, value, space_before)`. Kinds: num, letter, sym,
const, cmd, func, op, text, word, sep, empty, reals, begin, end, rowsep.
Two passes read the token list as a whole: `merge_thousands` (1,000,000 is
one number outside brackets) and `is_text_answer` (a word answer).
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Limits applied before any work that grows with the input. Real final answers
# are far below them; anything above is rejected, not truncated.
MAX_CHARS = 1500
MAX_TOKENS = 800
MAX_DEPTH = 40
MAX_DIGITS = 400
MAX_ITEMS = 64


class GrammarError(ValueError):
    """The text is not an answer this grammar accepts."""


class Token(NamedTuple):
    kind: str
    value: object
    space: bool  # whitespace came before it


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

FUNCS = {
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

INVERSE = {"sin": "asin", "cos": "acos", "tan": "atan"}

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
    "approx": ("op", "approx"),
    "leqq": ("op", "<="),
    "geqq": ("op", ">="),
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
UNIT_WORDS = frozenset(
    "cm mm km nm um kg mg ml mph kph ft yd mi hr hrs min mins sec secs lb lbs oz "
    "cal gal deg rad hz khz mhz ev kev mev pa kpa atm mol sq yr yrs am pm usd cents "
    "in s per".split()
)
# Short words that are answers in their own right, not products of variables.
SHORT_WORDS = frozenset("yes no odd all one two six ten none not".split())
# Letters text content may hold and still be read as math: "(A)", "(113)", "5".
_NUMBER_FIRST_RE = re.compile(r"[-+]?\d[\d.,]*\s+[^\W\d_]{2,}(\s+[^\W\d_]+)*$")
_MATHY_TEXT_RE = re.compile(r"[\d\s.,+\-()/]+|\s*\(?\s*[A-Za-z]\s*\)?\s*")


def _read_group(s: str, pos: int) -> tuple[str, int]:
    """Returns the content of the braced group at s[pos] and the index after it."""
    while pos < len(s) and s[pos] == " ":
        pos += 1
    if pos >= len(s) or s[pos] != "{":
        raise GrammarError("expected a braced argument")
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
    raise GrammarError("unbalanced braces")


def _num_token(raw: str, space: bool) -> Token:
    digits = sum(ch.isdigit() for ch in raw)
    if digits > MAX_DIGITS:
        raise GrammarError("number literal too long")
    return Token("num", raw, space)


def tokenize(s: str) -> list[Token]:
    """Splits a normalised answer into whitelisted tokens.

    Each token is `(kind, value, space_before)`. Kinds: num, letter, sym,
    const, cmd, func, op, text, word, sep, empty, reals, begin, end, rowsep.

    Args:
      s: a normalised answer string.

    Returns:
      The token list.

    Raises:
      GrammarError: on any character or command outside the whitelist, or when
        a size limit is exceeded.
    """
    out: list[Token] = []
    _tokenize_into(s, out, 0)
    return out


def _tokenize_into(s: str, out: list, level: int) -> None:
    if level > 4:
        raise GrammarError("text nested too deeply")
    pos = 0
    n = len(s)
    space = False
    depth = 0
    while pos < n:
        if len(out) > MAX_TOKENS:
            raise GrammarError("too many tokens")
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            raise GrammarError(f"unexpected character {s[pos]!r}")
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
                    raise GrammarError("nested too deeply")
            elif raw in ")]}":
                depth -= 1
            out.append(Token("op", raw, space))
        elif kind == "esc":
            c = raw[1]
            if c == "\\":
                out.append(Token("rowsep", None, space))
            elif c == "|":
                raise GrammarError("norms are not supported")
            else:
                out.append(Token("op", raw, space))
        else:
            pos = _command_tokens(s, pos, raw[1:], space, out, level)
        space = False


def _word_tokens(raw: str, space: bool, out: list) -> None:
    low = raw.casefold()
    if len(raw) == 1 and raw.isascii():
        out.append(Token("letter", raw, space))
    elif low in ("or", "and"):
        out.append(Token("sep", low, space))
    elif raw in FUNCS or raw == "sqrt":
        out.append(
            Token("func", raw, space) if raw in FUNCS else Token("cmd", "sqrt", space)
        )
    elif raw == "pi":
        out.append(Token("const", "pi", space))
    elif not raw.isascii():
        out.append(Token("text", raw, space))
    else:
        out.append(Token("word", raw, space))


def _command_tokens(
    s: str, pos: int, name: str, space: bool, out: list, level: int
) -> int:
    """Appends the tokens of command `name`; returns the position after it."""
    if name in _COMMANDS:
        kind, value = _COMMANDS[name]
        if kind != "skip":
            out.append(Token(kind, value, space))
        return pos
    if name in FUNCS:
        out.append(Token("func", name, space))
        return pos
    if name in _GREEK:
        out.append(Token("sym", name, space))
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
        inner: list[Token] = []
        _tokenize_into(content, inner, level + 1)
        if len(inner) != 1 or inner[0][0] not in ("letter", "sym"):
            raise GrammarError(f"unsupported \\{name} argument")
        out.append(Token("sym", f"{name}{{{inner[0][1]}}}", space))
        return pos
    if name == "mathbb":
        content, pos = _read_group(s, pos)
        content = content.strip()
        if content == "R":
            out.append(Token("reals", None, space))
        elif len(content) == 1 and content.isalpha():
            out.append(Token("sym", "mathbb" + content, space))
        else:
            raise GrammarError("unsupported \\mathbb argument")
        return pos
    if name in ("begin", "end"):
        env, pos = _read_group(s, pos)
        env = env.strip().rstrip("*")
        if env not in _MATRIX_ENVS:
            raise GrammarError(f"unsupported environment {env}")
        if name == "begin" and env == "array":
            _, pos = _read_group(s, pos)  # column spec, e.g. {cc}
        out.append(Token(name, env, space))
        return pos
    raise GrammarError(f"unsupported command \\{name}")


def _text_tokens(content: str, name: str, space: bool, out: list, level: int) -> None:
    stripped = content.replace("~", " ").strip()
    if not stripped:
        return
    if stripped.casefold() in _CONNECTORS:
        out.append(Token("sep", stripped.casefold().rstrip(","), space))
        return
    if name in ("mathrm", "operatorname") and stripped in FUNCS:
        out.append(Token("func", stripped, space))
        return
    if stripped.isalpha() and content[:1] in (" ", "~"):
        # "5\text{ m}", "5\mathrm{~cm}": a spaced-off word is a unit.
        out.append(Token("text", stripped, space))
        return
    if space and stripped in _UNIT_LETTERS and _after_value(out):
        # "1.77 \times 10^{-6}\,\mathrm{m}": a letter spaced off a value is a
        # unit too (not e or i, which are numbers).
        out.append(Token("text", stripped, space))
        return
    if _MATHY_TEXT_RE.fullmatch(stripped) or _NUMBER_FIRST_RE.match(stripped):
        # "(C)", "(113)", "12.8 mph": math, with any words read as units.
        _tokenize_into(stripped, out, level + 1)
        return
    out.append(Token("text", stripped, space))


_UNIT_LETTERS = frozenset("abcdfghjklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _after_value(out: list) -> bool:
    return bool(out) and (out[-1].kind == "num" or out[-1][:2] in _VALUE_ENDS)


_VALUE_ENDS = frozenset({("op", "}"), ("op", ")")})


# ----------------------------------------------- passes over the tokens
def merge_thousands(tokens: list[Token]) -> list[Token]:
    """Joins 1,000,000 (no spaces, 3-digit groups) and "10 000" into one number.

    Only outside brackets (inside them a comma separates coordinates), and only
    when the whole comma-joined run fits the pattern: "27,54,108" is a list.
    """
    out: list[Token] = []
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
                out.append(Token("num", "".join(parts), space))
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


def is_text_answer(tokens: list[Token]) -> bool:
    """True when the answer is words only: "Monday", "\\text{even}", "no"."""
    has_word = False
    for kind, value, _ in tokens:
        if kind == "text":
            has_word = True
        elif kind == "word":
            if len(value) >= 4 or value.casefold() in SHORT_WORDS:
                has_word = True
            elif value.casefold() not in UNIT_WORDS:
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

"""Answer extraction and equivalence: the training reward and eval grading.

The training reward (RECIPE.md, "Training reward") is binary: the content of
the last brace-matched `\\boxed{...}` / `\\fbox{...}` of the response is compared
with the ground truth; no box means 0. Eval grading (RECIPE.md, "Evaluation
protocol") extracts leniently (last box, else "the answer is ...", else the last
number) and accepts numbers within a relative tolerance of 1e-4.

Equivalence is decided by a table of rules, tried in order:

    exact string          the raw strings are equal
    normalised string     equal after `latex.normalize` (spacing, \\left, $, ...)
    choice                multiple-choice letters: "(C)", "\\text{C}", "C"
    text                  word answers, case- and \\text-insensitive
    structure             lists and sets (unordered, multiset), tuples and
                          intervals (ordered, brackets must agree), unions,
                          matrices, equations (same line / same inequality),
                          assignments (x = 3 vs 3), \\pm expanded to a list
    rational              exact Fraction arithmetic when both sides are rational
    numeric               high-precision evaluation of constant expressions
    symbolic identity     equal values at fixed generic points for every variable

Tolerances: in the training ("boxed") mode rational values must be equal
exactly; only when a side is written with a decimal point is a relative 1e-9
allowed (so "12.80" = 12.8 and a float-printed gold still matches, but 12.7 is
never 12.8 and 1.3333 is not 4/3). Irrational values are compared at 192-bit
precision. The "eval" mode uses the harness's relative 1e-4.

Why not sympy: identity at seven generic points at 192 bits (checked again at
higher precision for large values) decides what `simplify(a - b) == 0` would,
without its hangs, and the LaTeX grammar is ours because the maintained parsers
measured worse: sympy's `parse_latex` needs antlr4 4.11 exactly (its lark
backend evaluates eagerly and hung on 10^{10^{10}}), and it and
latex2sympy2_extended take 8-10 ms per expression against ~0.1 ms here.

Nothing derived from the text is evaluated as code: `rlvr_jax.latex` builds an
inert tuple tree from whitelisted tokens, and this module walks it with exact
integers and a private mpmath context, after guarding every power, factorial and
function argument against blow-up. Worst-case inputs still run in a killable
worker (`rlvr_jax.reward`), never under SIGALRM.

Run `python -m rlvr_jax.checker PRED GOLD` to see a decision and its rule.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import re
import sys
import zlib
from fractions import Fraction
from typing import NamedTuple

from mpmath.ctx_mp import MPContext

from rlvr_jax import latex

MODES = ("boxed", "eval")
MAX_ANSWER_CHARS = latex.MAX_CHARS

# Relative tolerances (see the module docstring).
DECIMAL_REL_TOL = 1e-9
EVAL_REL_TOL = 1e-4
# Numerical noise of 192-bit evaluation, well below any real difference.
_NOISE_REL = 1e-40
_NOISE_ABS = 1e-45

# Guards on the size of values, in bits. Exact integers above _MAX_EXACT_BITS
# fall back to floating point; floating values above _MAX_FLOAT_BITS (about a
# million decimal digits of magnitude) are "too large to compare".
_MAX_EXACT_BITS = 200_000
_MAX_FLOAT_BITS = 1 << 22
_MAX_TRIG_BITS = 64
_MAX_FACTORIAL = 200_000
# Precision cap when confirming that two large irrational values are equal.
_MAX_CONFIRM_BITS = 1 << 14

# A private mpmath context: the global `mpmath.mp` precision is left alone.
_C = MPContext()
_C.prec = 192


# ==========================================================================
# Extraction
# ==========================================================================

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


# ==========================================================================
# Exact rational evaluation
# ==========================================================================


def _bits(q: Fraction) -> int:
    return q.numerator.bit_length() + q.denominator.bit_length()


def _iroot(n: int, k: int) -> int | None:
    """The exact k-th root of n >= 0, or None when n is not a perfect power."""
    if n < 2:
        return n
    r = 1 << ((n.bit_length() + k - 1) // k)  # an upper bound
    while True:
        s = ((k - 1) * r + n // r ** (k - 1)) // k
        if s >= r:
            break
        r = s
    return r if r**k == n else None


def _exact_root(x: Fraction, k: int) -> Fraction | None:
    if k < 1 or k > 64 or _bits(x) > 4000:
        return None
    if x < 0:
        if k % 2 == 0:
            return None
        r = _exact_root(-x, k)
        return None if r is None else -r
    top, bottom = _iroot(x.numerator, k), _iroot(x.denominator, k)
    if top is None or bottom is None:
        return None
    return Fraction(top, bottom)


def _rational(node: tuple) -> Fraction | None:
    """The exact value when `node` is rational and small enough, else None."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "based":
        return node[3]
    if kind == "neg":
        v = _rational(node[1])
        return None if v is None else -v
    if kind in ("add", "mul"):
        total = Fraction(0) if kind == "add" else Fraction(1)
        for child in node[1]:
            v = _rational(child)
            if v is None:
                return None
            total = total + v if kind == "add" else total * v
            if _bits(total) > _MAX_EXACT_BITS:
                return None
        return total
    if kind == "div":
        a, b = _rational(node[1]), _rational(node[2])
        if a is None or b is None or b == 0:
            return None
        return a / b
    if kind == "pow":
        return _rational_pow(node[1], node[2])
    if kind == "func":
        return _rational_func(node[1], node[2])
    return None


def _rational_pow(base_node: tuple, exp_node: tuple) -> Fraction | None:
    exp = _rational(exp_node)
    if exp is None:
        return None
    base = _rational(base_node)
    if base is None:
        return None
    if exp.denominator != 1:
        root = _exact_root(base, exp.denominator)
        if root is None:
            return None
        base, exp = root, Fraction(exp.numerator)
    n = exp.numerator
    if base == 0:
        return None if n < 0 else Fraction(int(n == 0))
    if base in (1, -1):
        return base**n
    if abs(n) * _bits(base) > _MAX_EXACT_BITS:
        return None
    return base**n


def _rational_func(name: str, args: tuple) -> Fraction | None:
    if name == "root":
        k = _rational(args[1])
        x = _rational(args[0])
        if x is None or k is None or k.denominator != 1:
            return None
        return _exact_root(x, int(k))
    values = [_rational(a) for a in args]
    if any(v is None for v in values):
        return None
    if name == "abs":
        return abs(values[0])
    if name == "floor":
        return Fraction(math.floor(values[0]))
    if name == "ceil":
        return Fraction(math.ceil(values[0]))
    if name in ("max", "min"):
        return max(values) if name == "max" else min(values)
    ints = [int(v) for v in values if v.denominator == 1]
    if len(ints) != len(values):
        return None
    if name == "fact":
        return Fraction(math.factorial(ints[0])) if 0 <= ints[0] <= 2000 else None
    if name == "binom":
        n, k = ints
        return Fraction(math.comb(n, k)) if 0 <= k and 0 <= n <= 20000 else None
    if name in ("gcd", "lcm") and all(abs(v) < 1 << 256 for v in ints):
        return Fraction(math.gcd(*ints) if name == "gcd" else math.lcm(*ints))
    return None


# ==========================================================================
# Numerical evaluation (192-bit, guarded)
# ==========================================================================


class _Undefined(ArithmeticError):
    """The value is undefined or too large to compare at this point."""


def _guard(x):
    if _C.isnan(x):
        raise _Undefined("nan")
    if not _C.isinf(x) and _C.mag(x) > _MAX_FLOAT_BITS:
        raise _Undefined("too large")
    return x


def _is_real(x) -> bool:
    return not isinstance(x, _C.mpc) or x.imag == 0


def _real(x):
    if not _is_real(x):
        raise _Undefined("complex where a real is needed")
    return _C.mpf(x.real) if isinstance(x, _C.mpc) else x


def _as_int(x) -> int | None:
    if not _is_real(x):
        return None
    x = _real(x)
    if _C.isinf(x) or _C.mag(x) > 64 or x != _C.floor(x):
        return None
    return int(x)


def _numeric(node: tuple, env: dict):
    """Evaluates an expression tree at 192 bits; raises _Undefined."""
    kind = node[0]
    if kind in ("num", "based"):
        q = node[1] if kind == "num" else node[3]
        return _C.mpf(q.numerator) / q.denominator
    if kind == "const":
        return {"pi": _C.pi, "e": _C.e, "i": _C.j, "oo": _C.inf}[node[1]]
    if kind == "sym":
        return env[node[1]]
    if kind == "call":
        return env[_call_key(node)]
    if kind == "neg":
        return -_numeric(node[1], env)
    if kind == "add":
        total = _C.mpf(0)
        for child in node[1]:
            total = _guard(total + _numeric(child, env))
        return total
    if kind == "mul":
        total = _C.mpf(1)
        for child in node[1]:
            total = _guard(total * _numeric(child, env))
        return total
    if kind == "div":
        a, b = _numeric(node[1], env), _numeric(node[2], env)
        if b == 0:
            raise _Undefined("division by zero")
        return _guard(a / b)
    if kind == "pow":
        return _numeric_pow(node, env)
    if kind == "func":
        return _guard(_numeric_func(node[1], node[2], env))
    raise _Undefined(f"{kind} is not a number")


def _numeric_pow(node: tuple, env: dict):
    base = _numeric(node[1], env)
    exp = _numeric(node[2], env)
    if base == 0:
        if _is_real(exp) and _real(exp) > 0:
            return _C.mpf(0)
        if exp == 0:
            return _C.mpf(1)
        raise _Undefined("0 to a non-positive power")
    if _C.isinf(base) or _C.isinf(exp):
        raise _Undefined("infinite power")
    # |base^exp| ~ 2^(|exp| * log2|base|): refuse before computing a giant.
    if abs(exp) * (abs(_C.mag(base)) + 1) > _MAX_FLOAT_BITS:
        raise _Undefined("power too large")
    if _is_real(base) and _real(base) < 0 and _is_real(exp):
        # (-8)^(1/3) is -2 in school algebra: a real odd root, not the
        # principal complex one.
        q = _rational(node[2])
        if q is not None and q.denominator % 2 == 1:
            magnitude = _C.power(-_real(base), _real(exp))
            return _guard(-magnitude if q.numerator % 2 else magnitude)
    return _guard(_C.power(base, exp))


def _numeric_func(name: str, args: tuple, env: dict):
    if name == "root":
        x = _numeric(args[0], env)
        k = _numeric(args[1], env)
        if k == 0:
            raise _Undefined("zeroth root")
        k_int = _as_int(k)
        if k_int is not None and k_int % 2 == 1 and _is_real(x) and _real(x) < 0:
            return -_C.root(-_real(x), k_int)
        if k_int == 2:
            return _C.sqrt(x)
        return _C.power(x, 1 / k)
    vals = [_numeric(a, env) for a in args]
    x = vals[0]
    if name in ("sin", "cos", "tan", "cot", "sec", "csc"):
        if _C.isinf(x) or _C.mag(x) > _MAX_TRIG_BITS:
            raise _Undefined("trig argument too large")
        y = getattr(_C, name)(x) if name in ("sin", "cos", "tan") else None
        if name == "cot":
            y = _C.cos(x) / _nonzero(_C.sin(x))
        elif name == "sec":
            y = 1 / _nonzero(_C.cos(x))
        elif name == "csc":
            y = 1 / _nonzero(_C.sin(x))
        return y
    if name in ("asin", "acos", "atan"):
        return getattr(_C, name)(x)
    if name in ("sinh", "cosh", "tanh", "exp"):
        if _C.isinf(x) or abs(x) > _MAX_FLOAT_BITS // 2:
            raise _Undefined("exponential too large")
        return getattr(_C, name)(x)
    if name == "log":
        if x == 0 or _C.isinf(x):
            raise _Undefined("log of 0 or infinity")
        y = _C.log(x)
        if len(vals) == 2:
            base = _C.log(_nonzero(vals[1]))
            y = y / _nonzero(base)
        return y
    if name == "abs":
        return abs(x)
    if name in ("floor", "ceil"):
        x = _real(x)
        if _C.isinf(x):
            raise _Undefined("floor of infinity")
        return _C.floor(x) if name == "floor" else _C.ceil(x)
    if name == "fact":
        n = _as_int(x)
        if n is not None and n < 0:
            raise _Undefined("factorial of a negative integer")
        if not _is_real(x) or abs(x) > _MAX_FACTORIAL:
            raise _Undefined("factorial argument too large")
        return _C.factorial(x)
    if name == "binom":
        if abs(x) > _MAX_FACTORIAL or abs(vals[1]) > _MAX_FACTORIAL:
            raise _Undefined("binomial argument too large")
        return _C.binomial(x, vals[1])
    if name in ("max", "min"):
        reals = [_real(v) for v in vals]
        return max(reals) if name == "max" else min(reals)
    if name in ("gcd", "lcm"):
        ints = [_as_int(v) for v in vals]
        if any(v is None for v in ints):
            raise _Undefined(f"{name} of non-integers")
        return _C.mpf(math.gcd(*ints) if name == "gcd" else math.lcm(*ints))
    raise _Undefined(f"unknown function {name}")


def _nonzero(x):
    if x == 0:
        raise _Undefined("division by zero")
    return x


def _close(a, b, rel: float) -> bool:
    if _C.isinf(a) or _C.isinf(b):
        return a == b
    diff = abs(a - b)
    return diff <= max(rel * max(abs(a), abs(b)), _NOISE_ABS)


# ==========================================================================
# Tree helpers
# ==========================================================================

_EXPR_KINDS = frozenset(
    {
        "num",
        "based",
        "sym",
        "const",
        "add",
        "mul",
        "neg",
        "div",
        "pow",
        "func",
        "pm",
        "call",
    }
)


def _children(node: tuple) -> tuple:
    kind = node[0]
    if kind in ("add", "mul", "list", "set", "union"):
        return node[1]
    if kind in ("neg",):
        return (node[1],)
    if kind in ("div", "pow"):
        return (node[1], node[2])
    if kind == "pm":
        return tuple(x for x in node[1:] if x is not None)
    if kind in ("func", "call"):
        return node[2]
    if kind == "seq":
        return node[3]
    if kind == "rel":
        return node[2]
    if kind == "mat":
        return tuple(x for row in node[1] for x in row)
    return ()


def _walk(node: tuple):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(_children(n))


def _symbols(node: tuple) -> set[str]:
    out = set()
    for n in _walk(node):
        if n[0] == "sym":
            out.add(n[1])
        elif n[0] == "call":
            out.add(_call_key(n))
    return out


def _call_key(node: tuple) -> str:
    return f"{node[1]}{node[2]!r}"


def _has_decimal(node: tuple) -> bool:
    return any(n[0] == "num" and n[2] for n in _walk(node))


def _has_pm(node: tuple) -> bool:
    return any(n[0] == "pm" for n in _walk(node))


def _expand_pm(node: tuple) -> list[tuple]:
    """Every sign choice of the \\pm / \\mp in `node` (at most 3 of them)."""
    if not _has_pm(node):
        return [node]
    if sum(n[0] == "pm" for n in _walk(node)) > 3:
        raise latex.LatexError("too many \\pm")
    return _expand(node)


def _expand(node: tuple) -> list[tuple]:
    kind = node[0]
    if kind == "pm":
        rights = _expand(node[2])
        lefts = [None] if node[1] is None else _expand(node[1])
        out = []
        for left in lefts:
            for right in rights:
                for term in (right, ("neg", right)):
                    out.append(term if left is None else ("add", (left, term)))
        return out
    if kind in ("add", "mul", "list", "set", "union"):
        return [(kind, combo) for combo in _product(node[1])]
    if kind == "neg":
        return [("neg", x) for x in _expand(node[1])]
    if kind in ("div", "pow"):
        return [
            (kind, a, b)
            for a, b in itertools.product(_expand(node[1]), _expand(node[2]))
        ]
    if kind in ("func", "call"):
        return [(kind, node[1], combo) for combo in _product(node[2])]
    if kind == "seq":
        return [(kind, node[1], node[2], combo) for combo in _product(node[3])]
    if kind == "rel":
        return [(kind, node[1], combo) for combo in _product(node[2])]
    return [node]


def _product(children: tuple) -> list[tuple]:
    return [tuple(c) for c in itertools.product(*(_expand(x) for x in children))]


def _assigned_value(node: tuple) -> tuple | None:
    """The value a relation states: `x = 3`, `f(x) = 2x`, `x \\in [0, 1]`.

    A chain `v = 64/5 = 12.8`, or one of constants `12.8 = 64/5`, states a
    value only if its members are equal (strictly): `4/3 = 1.333` states none.
    """
    ops, operands = node[1], node[2]
    first = operands[0]
    if ops == ("in",) and first[0] == "sym":
        return operands[1]
    if any(op != "=" for op in ops):
        return None
    if first[0] in ("sym", "call"):
        values = operands[1:]
    elif len(operands) == 2 and operands[1][0] == "sym" and not _symbols(first):
        values = operands[:1]  # "12.8 = v"
    elif not any(_symbols(x) for x in operands):
        values = operands
    else:
        return None
    if any(_match(x, values[-1], _STRICT) is None for x in values[:-1]):
        return None
    return values[-1]


# ==========================================================================
# Equivalence
# ==========================================================================


class _Tol(NamedTuple):
    rel: float  # 0: exact for rationals


_STRICT = _Tol(0.0)
_EVAL = _Tol(EVAL_REL_TOL)


# Test points for variables: magnitudes from below 1 to about 30, both signs,
# so that piecewise-constant answers (floor, ceil) and sign-sensitive ones
# (|x| vs x) are told apart.
_POINT_SCALES = (0.6, 1.7, 4.3, 13.1, 29.3, -0.8, -3.7)


def _point_value(name: str, k: int):
    """A generic, irrational value for variable `name` at test point k."""
    h = zlib.crc32(f"{name}#{k}".encode())
    return _POINT_SCALES[k] * _C.sqrt(1 + _C.mpf(h) / 2**32)


def _match_based(a: tuple, b: tuple) -> str | None:
    """52_8 matches 52_8 (or 0052_{8}) and the bare digits 52, not 42."""
    if a[0] != "based":
        a, b = b, a
    if b[0] == "based":
        return "same base-b number" if a[2:] == b[2:] else None
    if b[0] == "num" and not b[2] and b[1].denominator == 1 and b[1] >= 0:
        return "digits of a base-b number" if str(b[1].numerator) == a[1] else None
    return None


def _match_expr(a: tuple, b: tuple, tol: _Tol) -> str | None:
    if a == b:
        return "identical"
    if a[0] == "based" or b[0] == "based":
        return _match_based(a, b)
    rel = tol.rel
    if _has_decimal(a) or _has_decimal(b):
        rel = max(rel, DECIMAL_REL_TOL)
    ra, rb = _rational(a), _rational(b)
    if ra is not None and rb is not None:
        if ra == rb:
            return "rational"
        if rel and abs(ra - rb) <= Fraction(rel) * max(abs(ra), abs(rb)):
            return "decimal within 1e-9" if rel == DECIMAL_REL_TOL else "numeric tol"
        return None
    names = sorted(_symbols(a) | _symbols(b))
    if not names:
        try:
            same = _same_value(a, b, [], 0, rel)
        except _EVAL_ERRORS:
            return None
        return "numeric" if same else None
    valid = 0
    for k in range(len(_POINT_SCALES)):
        try:
            same = _same_value(a, b, names, k, rel)
        except _EVAL_ERRORS:
            continue
        if not same:
            return None
        valid += 1
    return "symbolic identity" if valid >= 3 else None


_EVAL_ERRORS = (_Undefined, ZeroDivisionError, ValueError, OverflowError)


def _same_value(a: tuple, b: tuple, names: list[str], k: int, rel: float) -> bool:
    """Whether a and b agree at test point k, to `rel` (0: as exactly as we can).

    A match at 192 bits is confirmed at a precision that resolves the values'
    size: e^403 + 1 differs from e^403 by 1e-175 relatively, and e^{-200}
    from 0 by less than 192-bit noise; sin(pi), a true 0, shrinks with the
    precision while they do not.
    """
    env = {name: _point_value(name, k) for name in names}
    va, vb = _numeric(a, env), _numeric(b, env)
    if not _close(va, vb, max(rel, _NOISE_REL)):
        return False
    if rel > 0 and abs(va - vb) <= rel * max(abs(va), abs(vb)):
        return True  # within the tolerance; otherwise only an exact match will do
    mags = [int(_C.mag(v)) for v in (va, vb) if v != 0 and not _C.isinf(v)]
    need = max([0, *mags]) + max([0, *(-m for m in mags)])
    if need <= 32:
        return True
    bits = min(_C.prec + need + 64, _MAX_CONFIRM_BITS)
    with _C.workprec(bits):
        env = {name: _point_value(name, k) for name in names}
        va, vb = _numeric(a, env), _numeric(b, env)
        scale = max(abs(va), abs(vb), 1)
        return abs(va - vb) <= _C.ldexp(scale, 64 - bits)


def _match_line(a: tuple, b: tuple, tol: _Tol, positive: bool) -> str | None:
    """a and b (each "lhs - rhs") are non-zero constant multiples of each other.

    This is how `y = 2x + 1` matches `2x - y + 1 = 0`. With `positive`, the
    multiple must be positive (inequalities keep their direction).
    """
    names = sorted(_symbols(a) | _symbols(b))
    if not names:
        return None
    rel = max(tol.rel, DECIMAL_REL_TOL if _has_decimal(a) or _has_decimal(b) else 0)
    rel = max(rel, _NOISE_REL)
    ratio = None
    valid = 0
    for k in range(len(_POINT_SCALES)):
        env = {name: _point_value(name, k) for name in names}
        try:
            va, vb = _numeric(a, env), _numeric(b, env)
        except (_Undefined, ZeroDivisionError, ValueError, OverflowError):
            continue
        if va == 0 or vb == 0 or _C.isinf(va) or _C.isinf(vb):
            return None
        r = va / vb
        if ratio is None:
            if positive and not (_is_real(r) and _real(r) > 0):
                return None
            ratio = r
        elif not _close(r, ratio, rel):
            return None
        valid += 1
    return "same equation" if valid >= 3 else None


_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}


def _orient(node: tuple) -> tuple:
    """Rewrites a chain of > / >= as the same chain of < / <=."""
    ops, operands = node[1], node[2]
    if ops and all(op in (">", ">=") for op in ops):
        return ("rel", tuple(_FLIP[op] for op in reversed(ops)), operands[::-1])
    return node


def _match_rel(p: tuple, g: tuple, tol: _Tol) -> str | None:
    pv, gv = _assigned_value(p), _assigned_value(g)
    if pv is not None and gv is not None and p[2][0] == g[2][0]:
        rule = _match(pv, gv, tol)
        return f"assignment ({rule})" if rule else None
    p, g = _orient(p), _orient(g)
    if p[1] != g[1]:
        return None
    if len(p[2]) == 2 and p[1][0] in ("=", "<", "<=", "!="):
        # One relation: compare lhs - rhs up to a constant factor.
        fp = ("add", (p[2][0], ("neg", p[2][1])))
        fg = ("add", (g[2][0], ("neg", g[2][1])))
        rule = _match_line(fp, fg, tol, positive=p[1][0] in ("<", "<="))
        if rule:
            return rule
    rules = [_match(x, y, tol) for x, y in zip(p[2], g[2])]
    if all(rules):
        return "same relation"
    if p[1] in (("=",), ("!=",)):
        swapped = [_match(x, y, tol) for x, y in zip(p[2], g[2][::-1])]
        if all(swapped):
            return "same relation"
    return None


def _interval_of(node: tuple) -> tuple | None:
    """`x > 3` as (3, oo), `-1 <= x < 2` as [-1, 2); None for anything else."""
    node = _orient(node)
    ops, operands = node[1], node[2]
    oo = ("const", "oo")
    if not ops or any(op not in ("<", "<=") for op in ops):
        return None
    var = [i for i, x in enumerate(operands) if x[0] == "sym"]
    if len(var) != 1 or any(_symbols(x) for x in operands if x[0] != "sym"):
        return None
    i = var[0]
    if len(operands) == 2:
        if i == 0:  # x < c
            return (
                "seq",
                "(",
                ")" if ops[0] == "<" else "]",
                (("neg", oo), operands[1]),
            )
        return ("seq", "(" if ops[0] == "<" else "[", ")", (operands[0], oo))
    if len(operands) == 3 and i == 1:
        left = "(" if ops[0] == "<" else "["
        right = ")" if ops[1] == "<" else "]"
        return ("seq", left, right, (operands[0], operands[2]))
    return None


def _match_items(ps: tuple, gs: tuple, tol: _Tol, dedupe: bool) -> str | None:
    """Unordered match: a perfect matching between the two item lists."""
    if dedupe:
        ps, gs = _dedupe(ps, tol), _dedupe(gs, tol)
    if len(ps) != len(gs):
        return None
    n = len(ps)
    ok = [[_match(p, g, tol) is not None for g in gs] for p in ps]
    owner = [-1] * n  # owner[j] = the p matched to g j

    def augment(i: int, seen: list) -> bool:
        for j in range(n):
            if ok[i][j] and not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(n):
        if not augment(i, [False] * n):
            return None
    return "unordered items"


def _dedupe(items: tuple, tol: _Tol) -> tuple:
    out: list = []
    for x in items:
        if not any(_match(x, y, tol) for y in out):
            out.append(x)
    return tuple(out)


def _match(p: tuple, g: tuple, tol: _Tol) -> str | None:
    """The rule under which trees p and g are equal, or None."""
    kp, kg = p[0], g[0]
    if kp == "error" or kg == "error":
        return None
    if kp == "rel" and kg == "rel":
        return _match_rel(p, g, tol)
    if kp == "rel" or kg == "rel":
        rel, other, other_is_g = (p, g, True) if kp == "rel" else (g, p, False)
        value = _assigned_value(rel)
        if value is not None:
            rule = (
                _match(value, other, tol) if other_is_g else _match(other, value, tol)
            )
            return f"assignment ({rule})" if rule else None
        interval = _interval_of(rel)
        if interval is not None and other[0] in ("seq", "union"):
            return (
                _match(interval, other, tol)
                if other_is_g
                else _match(other, interval, tol)
            )
        return None
    if kp in ("list", "set") or kg in ("list", "set"):
        if kp in ("list", "set") and kg in ("list", "set"):
            dedupe = "set" in (kp, kg)
            rule = _match_items(p[1], g[1], tol, dedupe)
            return f"{'set' if dedupe else 'list'}: {rule}" if rule else None
        single = p if kp == "set" else g if kg == "set" else None
        if single is not None and len(single[1]) == 1:
            other = g if single is p else p
            return _match(single[1][0], other, tol)
        return None
    if kp == "union" or kg == "union":
        if kp == kg:
            rule = _match_items(p[1], g[1], tol, dedupe=False)
            return "union" if rule else None
        return None
    if kp == "seq" or kg == "seq":
        if kp != kg or p[1:3] != g[1:3] or len(p[3]) != len(g[3]):
            return None
        if all(_match(x, y, tol) for x, y in zip(p[3], g[3])):
            return "interval" if len(p[3]) == 2 and p[1] != p[2] else "tuple"
        return None
    if kp == "mat" or kg == "mat":
        if kp != kg or len(p[1]) != len(g[1]) or len(p[1][0]) != len(g[1][0]):
            return None
        pairs = zip(itertools.chain(*p[1]), itertools.chain(*g[1]))
        return "matrix" if all(_match(x, y, tol) for x, y in pairs) else None
    if kp == "text" or kg == "text":
        return "text" if kp == kg and p[1] == g[1] else None
    if kp in _EXPR_KINDS and kg in _EXPR_KINDS:
        return _match_expr(p, g, tol)
    return None


def _prepare(tree: tuple) -> tuple:
    """Expands \\pm into the list of values it stands for."""
    if tree[0] in ("list", "set"):
        items = tuple(x for item in tree[1] for x in _expand_pm(item))
        return (tree[0], items)
    values = _expand_pm(tree)
    if len(values) == 1:
        return values[0]
    return ("list", tuple(values))


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


def _decide(pred, gold, tol: _Tol) -> Explanation:
    pred, gold = _as_text(pred), _as_text(gold)
    if pred is None or gold is None or not pred.strip() or not gold.strip():
        return Explanation(False, "no answer")
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return Explanation(False, "answer too long")
    if pred.strip() == gold.strip():
        return Explanation(True, "exact string")
    p, g = latex.normalize(pred), latex.normalize(gold)
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
    tp, tg = latex.parse(p), latex.parse(g)
    if tg[0] == "error":
        return Explanation(False, f"gold not parsed: {tg[1]}")
    if tp[0] == "error":
        return Explanation(False, f"prediction not parsed: {tp[1]}")
    try:
        rule = _match(_prepare(tp), _prepare(tg), tol)
    except latex.LatexError as err:
        return Explanation(False, f"not comparable: {err}")
    if rule:
        return Explanation(True, rule)
    return Explanation(False, "different value or structure")


def _safe_decide(pred, gold, tol: _Tol) -> Explanation:
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
    latex.clear_cache()


def _tol(mode: str) -> _Tol:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return _STRICT if mode == "boxed" else _EVAL


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
        boxed = extract_answer(text, mode="boxed")
        if boxed is not None:
            return boxed
    return gold


class Grade(NamedTuple):
    """The grading of one response: whether it is correct, and what was read."""

    correct: bool
    extracted: str | None


def grade(response: str, gold, mode: str = "eval") -> Grade:
    """Extracts the answer of `response` (per `mode`) and compares it with `gold`.

    Args:
      response: the model's full response.
      gold: the ground-truth answer.
      mode: "eval" (lenient extraction, relative 1e-4) or "boxed" (the
        training reward's rules).

    Returns:
      Grade(correct, extracted).
    """
    reward_value, extracted, _ = score_item(response, gold, mode)
    return Grade(reward_value > 0, extracted)


def score_item(
    response: str, gold, mode: str = "boxed"
) -> tuple[float, str | None, bool]:
    """Scores one response; never raises for string input.

    Used by the reward pool's workers.

    Args:
      response: the model's full response.
      gold: the ground-truth answer, or a list of acceptable answers.
      mode: "boxed" or "eval".

    Returns:
      (reward 1.0/0.0, the extracted answer or None, whether an unexpected
      internal error occurred).
    """
    tol = _tol(mode)
    try:
        extracted = extract_answer(response, mode)
    except Exception:  # noqa: BLE001 - untrusted input; counted as an error
        return 0.0, None, True
    if extracted is None:
        return 0.0, None, False
    # A list of ground truths (veRL allows one) accepts any of them.
    golds = gold if isinstance(gold, (list, tuple)) else [gold]
    error = False
    for g in golds:
        decision = _safe_decide(extracted, _gold_answer(g), tol)
        if decision.equal:
            return 1.0, extracted, False
        error = error or decision.error
    return 0.0, extracted, error


def reward(response: str, ground_truth) -> float:
    """The training reward: 1.0 if the last box matches the ground truth, else 0.0.

    Args:
      response: the model's full response.
      ground_truth: the dataset's answer (`reward_model.ground_truth`).

    Returns:
      1.0 or 0.0. No box, an unclosed last box, or an empty one scores 0.
    """
    return score_item(response, ground_truth, "boxed")[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m rlvr_jax.checker PRED GOLD`: prints the decision and its rule."""
    parser = argparse.ArgumentParser(
        prog="python -m rlvr_jax.checker",
        description="Compare a predicted answer (or a response with a box) with a gold answer.",
    )
    parser.add_argument("pred", help="an answer, or a whole response with \\boxed{}")
    parser.add_argument("gold", help="the ground-truth answer")
    parser.add_argument("--mode", choices=MODES, default="boxed")
    args = parser.parse_args(argv)
    pred = args.pred
    if args.mode == "eval" or "\\boxed" in pred or "\\fbox" in pred:
        pred = extract_answer(pred, args.mode)
        print(f"extracted: {pred!r}")
    result = explain(pred, args.gold, args.mode)
    verdict = "EQUAL" if result.equal else "NOT EQUAL"
    print(f"{verdict} ({args.mode}): {result.rule}")
    return 0 if result.equal else 1


if __name__ == "__main__":
    sys.exit(main())

r"""Answers that denote sets of reals, as sympy sets built from our trees.

`answer_set` reads an answer as (its variable or None, a sympy set):

    [5, \infty), A \cup B             Interval, Union
    \{1, 2\}, 1, 2, \emptyset         FiniteSet, EmptySet
    \mathbb{R}                        Reals
    x \ge 5, 5 \le x, x = 2, x \ne 3  [5, oo), {2}, Reals \ {3} (as solveset has them)
    |x - 3| < 2, 2 \le |x + 3|        solveset(relation, x, Reals), for the centres
                                      x - a, x + a, a + x
    -1 \le x < 3                      the intersection of the chain's links
    x \in S                           S
    x < 2 or x > 3                    the union; two relations joined by "and",
                                      their intersection

so sympy settles what the sets are: `[1, 2] \cup [2, 3]` is `[1, 3]`, `x \ne 3`
is `(-\infty, 3) \cup (3, \infty)`. `pieces` hands a set back as its intervals
and points in increasing order, with bounds as our trees again, so that
`grading.rules` compares bounds by its own value rule (exact unless a side
is written as a decimal).

Only relations in one variable that state their set are read: one side of
each link the variable (or |x - a|), the other a constant. `x^2 > 4` or
`2x - 4 > 6` restate a problem rather than answer it: they, and whatever
passes the guards below or leaves sympy undecided, keep the rules for
relations in `grading.rules`.

Untrusted text never reaches sympy: its objects are built node by node from
the inert tree (nothing here calls sympify, parse_expr or eval), and sizes
are bounded before sympy sees them, because sympy computes eagerly
(`Integer(10)**10**10` does not return): at most _MAX_NODES nodes and
_MAX_CALLS powers and functions an answer, rationals of _MAX_BITS bits,
exponents with terms up to _MAX_EXPONENT, _MAX_LINKS relations. What still
takes long runs under the reward pool's per-answer deadline. This module
imports sympy (about half a second); `grading.rules` imports it only for an
answer that `relations.set_like` finds may be a set.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import NamedTuple

import sympy
from sympy.solvers.solveset import solveset

from rlvr_jax.reward.grading.nodes import (
    EXPR,
    OO,
    Add,
    Const,
    Div,
    Func,
    List,
    Mul,
    Neg,
    Node,
    Num,
    Pow,
    Rel,
    Seq,
    Set,
    Sym,
    Union,
    symbols,
    walk,
)
from rlvr_jax.reward.grading.relations import bare_set, centre, set_like
from rlvr_jax.reward.grading.values import (
    EVAL_ERRORS,
    C,
    bits,
    is_real,
    numeric,
    rational,
)

_MAX_NODES = 200
_MAX_CALLS = 8
_MAX_BITS = 4096
_MAX_EXPONENT = 64
_MAX_LINKS = 8  # relations in a chain or a list
_MAX_ITEMS = 16  # sets in a union, values in braces (sympy merges them pairwise)
_MAX_ARGUMENT_BITS = 64  # |x| < 2^64 in sin(x) or e^x, as `grading.values` allows
_CACHE = 4096  # answers; a training step compares ~1024 answers to one gold

_RELATIONS = {
    "<": sympy.Lt,
    "<=": sympy.Le,
    ">": sympy.Gt,
    ">=": sympy.Ge,
    "=": sympy.Eq,
    "!=": sympy.Ne,
}
_FUNCTIONS = {
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "cot": sympy.cot,
    "sec": sympy.sec,
    "csc": sympy.csc,
    "asin": sympy.asin,
    "acos": sympy.acos,
    "atan": sympy.atan,
    "exp": sympy.exp,
    "abs": sympy.Abs,
}
_NAMES = {f: name for name, f in _FUNCTIONS.items()}
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}

# The first solves load much of sympy (units, combinatorics; ~0.2 s): done
# here, so that a process that imports this module ahead (the reward pool's
# fork server can preload it) pays nothing at its first answer.
_X = sympy.Symbol("x", real=True)
solveset(sympy.Ge(_X, 5), _X, sympy.S.Reals)
solveset(sympy.Lt(sympy.Abs(_X - 3), 2), _X, sympy.S.Reals)


class Piece(NamedTuple):
    """An interval of a set; a point is an interval closed at both ends."""

    lo: Node
    hi: Node
    lo_closed: bool
    hi_closed: bool


def answer_set(node: Node) -> tuple[str | None, sympy.Set] | None:
    """The set of reals an answer denotes, and its variable (None for a bare set).

    Args:
      node: a parsed answer.

    Returns:
      (variable name or None, sympy set), or None when the answer is not read
      as a set (see the module docstring).
    """
    if not set_like(node) or not _small(node):
        return None
    return _answer_set(node)


def clear_cache() -> None:
    """Forgets the sets read so far (`answer_set` caches them per tree)."""
    _answer_set.cache_clear()


@functools.lru_cache(maxsize=_CACHE)
def _answer_set(node: Node) -> tuple[str | None, sympy.Set] | None:
    try:
        if isinstance(node, Rel):
            return _relation_set(node)
        if isinstance(node, List) and all(isinstance(x, Rel) for x in node.items):
            return _list_set(node)
        plain = _plain_set(bare_set(node))
        return None if plain is None else (None, plain)
    except Exception:  # noqa: BLE001 - what sympy cannot settle is not a set here
        return None


def pieces(s: sympy.Set) -> tuple[Piece, ...] | None:
    """The intervals and points of `s` in increasing order, or None.

    None when `s` is not a finite union of intervals and points, or a bound
    is not a number our trees write (`grading.nodes`).
    """
    try:
        parts = s.args if isinstance(s, sympy.Union) else (s,)
        spans = []
        for part in parts:
            if isinstance(part, sympy.Interval):
                spans.append(
                    (part.start, part.end, not part.left_open, not part.right_open)
                )
            elif isinstance(part, sympy.FiniteSet):
                spans.extend((p, p, True, True) for p in part.args)
            elif part is not sympy.S.EmptySet:
                return None
        spans.sort(key=lambda span: (span[0].evalf(30), span[1].evalf(30)))
        out = []
        for lo, hi, lo_closed, hi_closed in spans:
            a, b = _tree(lo), _tree(hi)
            if a is None or b is None:
                return None
            out.append(Piece(a, b, lo_closed, hi_closed))
        return tuple(out)
    except Exception:  # noqa: BLE001 - an order sympy cannot settle: not compared
        return None


# ------------------------------------------------------------ reading
def _small(node: Node) -> bool:
    count = calls = 0
    for n in walk(node):
        count += 1
        calls += isinstance(n, (Func, Pow))
        if count > _MAX_NODES or calls > _MAX_CALLS:
            return False
    return True


def _relation_set(node: Rel) -> tuple[str, sympy.Set] | None:
    """`x \\in S`, or a chain whose every link holds the variable on one side."""
    ops, operands = node.ops, node.operands
    if ops == ("in",):
        var, plain = operands[0], _plain_set(operands[1])
        return None if plain is None or not isinstance(var, Sym) else (var.name, plain)
    if not ops or len(ops) > _MAX_LINKS or any(op not in _RELATIONS for op in ops):
        return None
    # A chain runs one way: -1 <= x < 3, not 1 < x > 0.
    if len(ops) > 1 and not (set(ops) <= {"<", "<="} or set(ops) <= {">", ">="}):
        return None
    name, sets = None, []
    for lhs, op, rhs in zip(operands, ops, operands[1:]):
        link = _link(lhs, op, rhs)
        if link is None or name not in (None, link[0]):
            return None
        name = link[0]
        sets.append(link[1])
    return name, sets[0] if len(sets) == 1 else sympy.Intersection(*sets)


def _link(lhs: Node, op: str, rhs: Node) -> tuple[str, sympy.Set] | None:
    """`x < c`, `c < x`, `|x - a| < b` as (x, the set of reals it allows)."""
    for var_side, bound_side, swapped in ((lhs, rhs, False), (rhs, lhs, True)):
        var = _variable(var_side)
        if var is None:
            continue
        bound = _bound(bound_side)
        if bound is None:
            return None
        name, expr = var
        op = _FLIP.get(op, op) if swapped else op
        if isinstance(expr, sympy.Symbol):
            allowed = _half_line(op, bound)
        else:  # |x - a| op b: solveset splits the absolute value
            allowed = _solve(_RELATIONS[op](expr, bound), name)
        return None if allowed is None else (name, allowed)
    return None


def _half_line(op: str, c: sympy.Expr) -> sympy.Set | None:
    """What `x op c` allows, as solveset has it, built at once (solveset
    spends ~25 ms on these looking for a period)."""
    if op in ("=", "!="):
        if c.is_infinite:
            return None
        point = sympy.FiniteSet(c)
        return point if op == "=" else sympy.Complement(sympy.S.Reals, point)
    if op in ("<", "<="):
        return sympy.Interval(sympy.S.NegativeInfinity, c, True, op == "<")
    return sympy.Interval(c, sympy.oo, op == ">", True)


def _variable(node: Node) -> tuple[str, sympy.Expr] | None:
    if isinstance(node, Sym):
        return node.name, _symbol(node.name)
    if isinstance(node, Func) and node.name == "abs" and len(node.args) == 1:
        found = centre(node.args[0])
        if found is not None:
            name, offset = found
            shift = _constant(offset)
            if shift is not None:
                return name, sympy.Abs(_symbol(name) + shift)
    return None


def _symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


def _solve(relation, name: str) -> sympy.Set | None:
    if relation is sympy.true:  # x < oo
        return sympy.S.Reals
    if relation is sympy.false:
        return sympy.S.EmptySet
    solved = solveset(relation, _symbol(name), sympy.S.Reals)
    return (
        solved
        if isinstance(solved, (sympy.Interval, sympy.FiniteSet, sympy.Union))
        else None
    )


def _list_set(node: List) -> tuple[str, sympy.Set] | None:
    """`x < 2 or x > 3`: a union; `x > 1 and x < 3`: an intersection.

    "and" anywhere makes the list a conjunction (`List.conj`), so that reading
    is taken for two relations only: "x > 1 and x < 3 or x > 5" reads neither
    way for sure.
    """
    if len(node.items) > _MAX_LINKS:
        return None
    read = [_relation_set(x) for x in node.items]
    if any(r is None for r in read) or len({name for name, _ in read}) != 1:
        return None
    name, sets = read[0][0], [s for _, s in read]
    if node.conj:
        return (name, sympy.Intersection(*sets)) if len(sets) == 2 else None
    return name, sympy.Union(*sets)


def _plain_set(node: Node) -> sympy.Set | None:
    match node:
        case Seq(opener, closer, (lo, hi)) if opener in "([" and closer in ")]":
            a, b = _bound(lo), _bound(hi)
            if a is None or b is None or a is sympy.oo or b is sympy.S.NegativeInfinity:
                return None
            return sympy.Interval(a, b, opener == "(", closer == ")")
        case Union(items) if len(items) <= _MAX_ITEMS:
            parts = [_plain_set(x) for x in items]
            return None if any(p is None for p in parts) else sympy.Union(*parts)
        case Set(items) | List(items) if len(items) <= _MAX_ITEMS and all(
            isinstance(x, EXPR) for x in items
        ):
            values = [_constant(x) for x in items]
            return None if any(v is None for v in values) else sympy.FiniteSet(*values)
    return None


# ----------------------------------------------------------- numbers
def _bound(node: Node) -> sympy.Expr | None:
    if node == OO:
        return sympy.oo
    if node == Neg(OO):
        return sympy.S.NegativeInfinity
    return _constant(node)


def _constant(node: Node) -> sympy.Expr | None:
    """A constant tree as an exact sympy number, or None (not a finite real,
    or past the guards)."""
    if symbols(node):
        return None
    value = _number(node)
    return value if value is not None and value.is_real is True else None


def _number(node: Node) -> sympy.Expr | None:
    q = rational(node)
    if q is not None:
        return (
            sympy.Rational(q.numerator, q.denominator) if bits(q) <= _MAX_BITS else None
        )
    match node:
        case Const("pi"):
            return sympy.pi
        case Const("e"):
            return sympy.E
        case Neg(x):
            value = _number(x)
            return None if value is None else -value
        case Add(items) | Mul(items):
            values = [_number(x) for x in items]
            if any(v is None for v in values):
                return None
            return sympy.Add(*values) if isinstance(node, Add) else sympy.Mul(*values)
        case Div(a, b):
            a, b = _number(a), _number(b)
            return None if a is None or b is None else a / b
        case Pow(base, exp):
            return _power(base, rational(exp))
        case Func("root", (x, k)):
            k = rational(k)
            ok = k is not None and k.denominator == 1 and k > 1
            return _power(x, 1 / k) if ok else None
        case Func("log", (x,)):
            x = _number(x)
            return None if x is None else sympy.log(x)
        case Func("log", (x, base)):
            x, base = _number(x), _number(base)
            return None if x is None or base is None else sympy.log(x, base)
        case Func(name, (x,)) if name in _FUNCTIONS and _moderate(x):
            x = _number(x)
            return None if x is None else _FUNCTIONS[name](x)
    return None


def _moderate(node: Node) -> bool:
    """A function argument sympy can evaluate quickly: sin(10^{4000}) needs
    thousands of digits of pi before its first digit."""
    try:
        value = numeric(node, {})
    except EVAL_ERRORS:
        return False
    return value == 0 or (is_real(value) and C.mag(value) <= _MAX_ARGUMENT_BITS)


def _power(base_node: Node, exp: Fraction | None) -> sympy.Expr | None:
    """base^exp for a small rational exponent; (-8)^(1/3) is -2, as in
    `grading.values`, not sympy's principal complex root."""
    if exp is None or max(abs(exp.numerator), exp.denominator) > _MAX_EXPONENT:
        return None
    base = _number(base_node)
    if base is None:
        return None
    power = sympy.Rational(exp.numerator, exp.denominator)
    if base.is_negative and exp.denominator % 2 == 1:
        magnitude = (-base) ** power
        return -magnitude if exp.numerator % 2 else magnitude
    return base**power


def _tree(x: sympy.Expr) -> Node | None:
    """A bound back as our tree (what `_number` builds, and solveset's sums)."""
    if x is sympy.oo:
        return OO
    if x is sympy.S.NegativeInfinity:
        return Neg(OO)
    if isinstance(x, sympy.Rational):
        return Num(Fraction(int(x.p), int(x.q)))
    if x is sympy.pi:
        return Const("pi")
    if x is sympy.E:
        return Const("e")
    args = [_tree(a) for a in x.args]
    if not args or any(a is None for a in args):
        return None
    if isinstance(x, sympy.Add):
        return Add(tuple(args))
    if isinstance(x, sympy.Mul):
        return Mul(tuple(args))
    if isinstance(x, sympy.Pow):
        return Pow(*args)
    if isinstance(x, sympy.exp):
        return Pow(Const("e"), args[0])
    if isinstance(x, sympy.log):
        return Func("log", tuple(args))
    name = _NAMES.get(type(x))
    return None if name is None else Func(name, tuple(args))

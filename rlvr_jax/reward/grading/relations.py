"""Reading relations as the answers they state: labels and solution sets.

Pure tree rewrites, no comparison (that is `grading.rules`):

    is_label        `x`, `f(x)`, `AB`, `|PQ|`, `\\angle ABC`, `AB:CD`, `(a, b)`:
                    the name an answer is given under, as in `|PQ| = 2`
    solution_set    `0 < x \\le 4` and `x \\in (0, 4]` as (x, (0, 4]);
                    `|x - 3| > 2` as (x, (-oo, 1) U (5, oo))
    list_set        `x < 2 or x > 3` as (-oo, 2) U (3, oo); `x > 1 and x < 3`
                    as (1, 3)
    labelled_values `m = 12, n = 7` as the values (12, 7), in written order

Interval arithmetic is exact here (bounds stay trees, compared later), which
covers linear and absolute-value inequalities in one variable, the forms
answers take. sympy's `solveset` would also solve polynomial inequalities,
but nothing measured needs it: one gold among the 1,547 of the six packaged
benchmarks is an inequality (`k \\geqslant 2`), and every inequality case of
tests/data/grading_cases.jsonl is linear or an absolute value.
"""

from __future__ import annotations

from rlvr_jax.reward.grading.nodes import (
    OO,
    Add,
    Call,
    Div,
    Func,
    List,
    Mul,
    Neg,
    Node,
    Rel,
    Seq,
    Sym,
    Union,
    num,
    symbols,
)

_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}


def orient(node: Rel) -> Rel:
    """Rewrites a chain of > / >= as the same chain of < / <=."""
    if node.ops and all(op in (">", ">=") for op in node.ops):
        return Rel(tuple(_FLIP[op] for op in reversed(node.ops)), node.operands[::-1])
    return node


def is_label(node: Node) -> bool:
    """Whether `node` names a quantity rather than computing one.

    Labels hold only variables: `x`, `f(x)`, `AB` (a product of letters),
    `AB:CD`, `|PQ|`, `\\angle ABC`, `(a, b)`. `2x` and `x + y` are not labels:
    `2x = 10` does not say the answer is 10.
    """
    match node:
        case Sym() | Call():
            return True
        case Mul(factors):
            return all(isinstance(f, Sym) for f in factors)
        case Div(a, b):
            return is_label(a) and is_label(b)
        case Func("abs", (x,)):
            return is_label(x)
        case Seq("(", ")", items):
            return all(isinstance(x, Sym) for x in items)
    return False


def _interval(lo: Node, hi: Node, lo_closed: bool, hi_closed: bool) -> Seq:
    return Seq("[" if lo_closed else "(", "]" if hi_closed else ")", (lo, hi))


def _center(inner: Node) -> tuple[str, Node] | None:
    """`x - a` (or `x`, `x + a`, `a + x`) as (x, a); None for anything else."""
    if isinstance(inner, Sym):
        return inner.name, num(0)
    if isinstance(inner, Add) and len(inner.terms) == 2:
        for var, rest in (inner.terms, inner.terms[::-1]):
            if isinstance(var, Sym) and not symbols(rest):
                return var.name, rest.x if isinstance(rest, Neg) else Neg(rest)
    return None


def _abs_set(ops: tuple, operands: tuple) -> tuple[str, Node] | None:
    """`|x - a| < b` as (x, (a - b, a + b)); `b < |x - a|` as the outside union."""
    if len(ops) != 1:
        return None
    left, right = operands
    closed = ops[0] == "<="
    for absval, bound, inside in ((left, right, True), (right, left, False)):
        if not (isinstance(absval, Func) and absval.name == "abs") or symbols(bound):
            continue
        center = _center(absval.args[0])
        if center is None:
            return None
        name, a = center
        lo, hi = Add((a, Neg(bound))), Add((a, bound))
        if inside:
            return name, _interval(lo, hi, closed, closed)
        below = _interval(Neg(OO), lo, False, closed)
        above = _interval(hi, OO, closed, False)
        return name, Union((below, above))
    return None


def solution_set(node: Rel) -> tuple[str, Node] | None:
    """The variable a relation constrains and the set it allows, or None.

    `x \\in S` is (x, S); `x > 3` is (x, (3, oo)); `-1 <= x < 2` is
    (x, [-1, 2)); `|x - a| < b` and `|x - a| > b` are an interval and a union.
    """
    if node.ops == ("in",) and isinstance(node.operands[0], Sym):
        return node.operands[0].name, node.operands[1]
    node = orient(node)
    ops, operands = node.ops, node.operands
    if not ops or any(op not in ("<", "<=") for op in ops):
        return None
    var = [i for i, x in enumerate(operands) if isinstance(x, Sym)]
    if not var:
        return _abs_set(ops, operands)
    if len(var) != 1 or any(symbols(x) for x in operands if not isinstance(x, Sym)):
        return None
    i, name = var[0], operands[var[0]].name
    if len(operands) == 2:
        if i == 0:  # x < c
            return name, _interval(Neg(OO), operands[1], False, ops[0] == "<=")
        return name, _interval(operands[0], OO, ops[0] == "<=", False)
    if len(operands) == 3 and i == 1:
        lo, hi = operands[0], operands[2]
        return name, _interval(lo, hi, ops[0] == "<=", ops[1] == "<=")
    return None


def bare_set(node: Node) -> Node:
    """OlympiadBench writes `t(0,4]` for `t \\in (0, 4]`: the interval of it."""
    match node:
        case Mul((Sym(), Seq() as interval)) if len(interval.items) == 2:
            return interval
    return node


def list_set(node: List) -> tuple[str, Node] | None:
    """The set a list of relations on one variable allows, or None.

    `x < 2 or x > 3` is the union (-oo, 2) U (3, oo); `x > 1 and x < 3`, a
    lower and an upper bound joined by "and", is the interval (1, 3).
    """
    if not all(isinstance(x, Rel) for x in node.items):
        return None
    sets = [solution_set(x) for x in node.items]
    if any(s is None for s in sets) or len({name for name, _ in sets}) != 1:
        return None
    name = sets[0][0]
    if node.conj:
        meet = _meet([s for _, s in sets])
        return None if meet is None else (name, meet)
    pieces = []
    for _, s in sets:
        pieces.extend(s.items if isinstance(s, Union) else (s,))
    return name, Union(tuple(pieces))


def _meet(sets: list) -> Seq | None:
    """A lower half-line and an upper one as the interval between them."""
    if len(sets) != 2 or not all(isinstance(s, Seq) for s in sets):
        return None
    lower = [s for s in sets if s.items[1] == OO]
    upper = [s for s in sets if s.items[0] == Neg(OO)]
    if len(lower) != 1 or len(upper) != 1 or lower[0] is upper[0]:
        return None
    (lo,), (hi,) = lower, upper
    return Seq(lo.open, hi.close, (lo.items[0], hi.items[1]))


def labelled_values(node: List) -> tuple | None:
    """`m = 12, n = 7` as (12, 7): every item `label = value`, labels distinct."""
    values, labels = [], set()
    for item in node.items:
        if not (isinstance(item, Rel) and item.ops == ("=",)):
            return None
        label, value = item.operands
        if not is_label(label) or symbols(value) or label in labels:
            return None
        labels.add(label)
        values.append(value)
    return tuple(values)

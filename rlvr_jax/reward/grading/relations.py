"""Reading relations as the answers they state: labels, and which may be sets.

Pure tree inspection, no comparison (that is `grading.rules`) and no sympy:

    is_label        `x`, `f(x)`, `AB`, `|PQ|`, `\\angle ABC`, `AB:CD`, `(a, b)`:
                    the name an answer is given under, as in `|PQ| = 2`
    set_like        whether an answer may denote a set of reals (`x \\le 4`,
                    `|x - 3| > 2`, `x < 2 or x > 3`, `(0, 4]`, `A \\cup B`):
                    `grading.sets` reads those with sympy
    labelled_values `m = 12, n = 7` as the values (12, 7), in written order
"""

from __future__ import annotations

from rlvr_jax.reward.grading.nodes import (
    EXPR,
    Add,
    Call,
    Div,
    Func,
    List,
    Mul,
    Node,
    Rel,
    Seq,
    Set,
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


def centre(inner: Node) -> tuple[str, Node] | None:
    """`x - a` (or `x`, `x + a`, `a + x`) as (x, -a): the variable and what is
    added to it; None for anything else, `|3 - x|` and `|2x|` included."""
    if isinstance(inner, Sym):
        return inner.name, num(0)
    if isinstance(inner, Add) and len(inner.terms) == 2:
        for var, rest in (inner.terms, inner.terms[::-1]):
            if isinstance(var, Sym) and not symbols(rest):
                return var.name, rest
    return None


_SET_OPS = frozenset({"<", "<=", ">", ">=", "=", "!=", "in"})


def set_like(node: Node) -> bool:
    """Whether an answer may denote a set of reals: an interval, a union, a
    set in braces, a list of values, or a relation in one variable stating
    its set (each operand the variable, |x - a|, or a constant), or a list
    of those. A cheap test on the tree: `grading.sets` decides."""
    match bare_set(node):
        case Seq(opener, closer, items):
            return len(items) == 2 and opener in "([" and closer in ")]"
        case Union() | Set():
            return True
        case Rel(("in",), (Sym(), _)):
            return True
        case Rel(ops, operands) if all(op in _SET_OPS - {"in"} for op in ops):
            names = {_variable_name(x) for x in operands if symbols(x)}
            return len(names) == 1 and None not in names
        case List(items):
            if all(isinstance(x, Rel) for x in items):
                return all(set_like(x) for x in items)
            return all(isinstance(x, EXPR) and not symbols(x) for x in items)
    return False


def _variable_name(node: Node) -> str | None:
    """x for `x` and for `|x - a|`; None for any other operand with variables."""
    if isinstance(node, Sym):
        return node.name
    if isinstance(node, Func) and node.name == "abs":
        found = centre(node.args[0])
        return None if found is None else found[0]
    return None


def bare_set(node: Node) -> Node:
    """OlympiadBench writes `t(0,4]` for `t \\in (0, 4]`: the interval of it."""
    match node:
        case Mul((Sym(), Seq() as interval)) if len(interval.items) == 2:
            return interval
    return node


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

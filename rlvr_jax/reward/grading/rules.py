"""Equivalence rules over two parsed answers.

`match(pred, gold, tol)` returns the name of the rule under which the two trees
are the same answer, or None. Structure is compared first (lists and sets
unordered, tuples and intervals ordered with their brackets, matrices and
vectors, relations read through `grading.relations`: a label's value, a
chain's last member), then sets of reals, then values. Intervals, unions and
relations in one variable that state a set (`x \\ge 5`, `-1 \\le x < 3`,
`x < 2 or x > 3`, `|x - 3| < 2`) are compared as sets in sympy
(`grading.sets`): `x \\ge 5` is `[5, \\infty)`, `x > 5` is not. Values are exact
Fractions when both sides are rational, exact numbers otherwise
(`values.equal_at`: precision raised until a difference is resolved), and
for expressions with variables agreement at seven generic points (an
identity test that decides what `simplify(a - b) == 0` would, without its
hangs). Equations match up to rearrangement and a constant factor the same
way (`_match_line`), and matrices entry by entry.

Exact unless approximate: when neither side is written with a decimal point
the values must be equal exactly, in both modes (1/170! is not 1/171!,
10^{-400} is not 0, 10^{400} + 1 is not 10^{400}, sqrt(2) + 10^{-400} is not
sqrt(2)). A side with a decimal point is an approximation and allows a
relative `DECIMAL_REL_TOL` (so "12.80" = 12.8, 0.3333333333 = 1/3 and a
float-printed gold still matches, but 12.7 is never 12.8 and 1.3333 is not
4/3); the eval mode widens that to the harness's relative 1e-4 (`Tol.rel`).
"""

from __future__ import annotations

import dataclasses
import itertools
from fractions import Fraction
from typing import NamedTuple

from rlvr_jax.reward.grading.lexer import GrammarError
from rlvr_jax.reward.grading.nodes import (
    EXPR,
    OO,
    Add,
    Based,
    Call,
    Div,
    Func,
    List,
    Mat,
    Mul,
    Neg,
    Node,
    Num,
    Pm,
    Pow,
    Rel,
    Seq,
    Set,
    Sym,
    Text,
    Union,
    children,
    has_decimal,
    symbols,
    walk,
)
from rlvr_jax.reward.grading.relations import (
    bare_set,
    is_label,
    labelled_values,
    orient,
    set_like,
)
from rlvr_jax.reward.grading.values import (
    EVAL_ERRORS,
    POINT_SCALES,
    C,
    env_at,
    equal_at,
    is_real,
    numeric,
    rational,
    real,
)

DECIMAL_REL_TOL = 1e-9
EVAL_REL_TOL = 1e-4
_MAX_PM = 3
# A decimal of at least this many significant digits matches the exact value
# it rounds, in the eval mode.
_ROUNDED_DIGITS = 3
_MIN_PLACES = -64  # 1.2e70 is not "a rounding" worth a giant Fraction


class Tol(NamedTuple):
    rel: float  # for a side with a decimal point (at least DECIMAL_REL_TOL)
    # Matrix entries in the eval mode: a decimal matches the exact value it
    # rounds ("the precision the response gives"). A lone 1.33 stays wrong
    # for 4/3; a matrix written to three places is a presentation.
    rounded: bool = False


STRICT = Tol(0.0)
EVAL = Tol(EVAL_REL_TOL)


# ------------------------------------------------------------- \pm
def prepare(tree: Node) -> Node:
    """Expands \\pm into the list of values it stands for."""
    if isinstance(tree, (List, Set)):
        items = tuple(x for item in tree.items for x in _expand_pm(item))
        return dataclasses.replace(tree, items=items)
    values = _expand_pm(tree)
    return values[0] if len(values) == 1 else List(tuple(values))


def _expand_pm(node: Node) -> list:
    """Every sign choice of the \\pm / \\mp in `node` (at most three of them)."""
    count = sum(isinstance(n, Pm) for n in walk(node))
    if count == 0:
        return [node]
    if count > _MAX_PM:
        raise GrammarError("too many \\pm")
    return _expand(node)


def _expand(node: Node) -> list:
    match node:
        case Pm(left, right):
            lefts = [None] if left is None else _expand(left)
            return [
                term if lhs is None else Add((lhs, term))
                for lhs in lefts
                for r in _expand(right)
                for term in (r, Neg(r))
            ]
        case List(items):
            return [dataclasses.replace(node, items=c) for c in _product(items)]
        case Add(items) | Mul(items) | Set(items) | Union(items):
            return [type(node)(combo) for combo in _product(items)]
        case Neg(x):
            return [Neg(v) for v in _expand(x)]
        case Div(a, b) | Pow(a, b):
            pairs = itertools.product(_expand(a), _expand(b))
            return [type(node)(x, y) for x, y in pairs]
        case Func(name, args) | Call(name, args):
            return [type(node)(name, combo) for combo in _product(args)]
        case Seq(opener, closer, items):
            return [Seq(opener, closer, combo) for combo in _product(items)]
        case Rel(ops, operands):
            return [Rel(ops, combo) for combo in _product(operands)]
    return [node]


def _product(children: tuple) -> list:
    return [tuple(c) for c in itertools.product(*(_expand(x) for x in children))]


# ---------------------------------------------------------- values
def _match_based(a: Node, b: Node) -> str | None:
    """52_8 matches 52_8 (or 0052_{8}) and the bare digits 52, not 42."""
    if not isinstance(a, Based):
        a, b = b, a
    if isinstance(b, Based):
        same = (a.base, a.value) == (b.base, b.value)
        return "same base-b number" if same else None
    if isinstance(b, Num) and not b.is_decimal and b.value.denominator == 1:
        if b.value >= 0 and str(b.value.numerator) == a.digits:
            return "digits of a base-b number"
    return None


def _match_expr(a: Node, b: Node, tol: Tol) -> str | None:
    if a == b:
        return "identical"
    if isinstance(a, Based) or isinstance(b, Based):
        return _match_based(a, b)
    return _match_values(a, b, tol, has_decimal(a) or has_decimal(b))


def _match_values(a: Node, b: Node, tol: Tol, inexact: bool) -> str | None:
    """Two expressions as values: exactly, unless `inexact` (a side is written
    with a decimal point, an approximation) allows the tolerance."""
    rel = max(tol.rel, DECIMAL_REL_TOL) if inexact else 0.0
    ra, rb = rational(a), rational(b)
    if ra is not None and rb is not None:
        if ra == rb:
            return "rational"
        if rel and abs(ra - rb) <= Fraction(rel) * max(abs(ra), abs(rb)):
            return "decimal within 1e-9" if rel == DECIMAL_REL_TOL else "numeric tol"
    if tol.rounded and _rounds_to(a, b):
        return "decimal as rounded"
    if ra is not None and rb is not None:
        return None
    names = sorted(symbols(a) | symbols(b))
    if not names:
        try:
            same = _same_value(a, b, [], 0, rel)
        except EVAL_ERRORS:
            return None
        return "numeric" if same else None
    valid = 0
    for k in range(len(POINT_SCALES)):
        try:
            same = _same_value(a, b, names, k, rel)
        except EVAL_ERRORS:
            continue
        if not same:
            return None
        valid += 1
    return "symbolic identity" if valid >= 3 else None


def _decimal_literal(node: Node) -> Num | None:
    """The literal of `0.667` or `-0.333`, or None."""
    if isinstance(node, Neg):
        inner = _decimal_literal(node.x)
        return None if inner is None else Num(-inner.value, True, inner.places)
    if isinstance(node, Num) and node.is_decimal:
        return node
    return None


def _rounds_to(a: Node, b: Node) -> bool:
    """One side is a decimal of 3+ significant digits, the other an exact value
    the decimal rounds (eval mode: "the precision the response gives").

    -0.333 for -1/3, 0.4898 for 24/49; not 0.33 for 1/3 (two digits), nor
    0.334 (not the rounding).
    """
    for dec_node, exact in ((a, b), (b, a)):
        dec = _decimal_literal(dec_node)
        if dec is None or has_decimal(exact) or not _MIN_PLACES <= dec.places:
            continue
        digits = abs(dec.value) * Fraction(10) ** dec.places
        if digits.denominator != 1 or len(str(digits.numerator)) < _ROUNDED_DIGITS:
            continue
        try:
            value = rational(exact)
            if value is None:
                value = Fraction(str(C.nstr(numeric(exact, {}), 60)))
        except (*EVAL_ERRORS, KeyError):
            continue
        if abs(value - dec.value) <= Fraction(1, 2) * Fraction(10) ** -dec.places:
            return True
    return False


def _same_value(a: Node, b: Node, names: list[str], k: int, rel: float) -> bool:
    """Whether a and b agree at test point k: within `rel` (relative), or
    exactly (`values.equal_at`: e^{-200} is not 0, e^{403} + 1 not e^{403},
    sin(pi) is 0). Raises one of EVAL_ERRORS when there is no decision."""
    if rel > 0:
        env = env_at(names, k)
        va, vb = numeric(a, env), numeric(b, env)
        if C.isinf(va) or C.isinf(vb):
            return va == vb
        if abs(va - vb) <= rel * max(abs(va), abs(vb)):
            return True
    return equal_at(a, b, names, k)


# ------------------------------------------------------- relations
def _match_line(a: Node, b: Node, tol: Tol, positive: bool) -> str | None:
    """a and b (each "lhs - rhs") are non-zero constant multiples of each other.

    This is how `y = 2x + 1` matches `2x - y + 1 = 0`. The ratio a / b is a
    constant when a(P) b(Q) = a(Q) b(P) for independent points P and Q: an
    identity in twice the variables, decided by the value rule (exactly
    unless a side has a decimal: y = x + 10^{-400} is not y = x). With
    `positive`, the multiple must be positive (inequalities keep their
    direction).
    """
    names = sorted(symbols(a) | symbols(b))
    if not names:
        return None
    positive_ratio = None
    for k in range(len(POINT_SCALES)):
        env = env_at(names, k)
        try:
            va, vb = numeric(a, env), numeric(b, env)
        except EVAL_ERRORS:
            continue
        if va == 0 or vb == 0 or C.isinf(va) or C.isinf(vb):
            return None
        r = va / vb
        positive_ratio = is_real(r) and real(r) > 0
        break
    if positive_ratio is None or (positive and not positive_ratio):
        return None
    cross = Mul((a, _renamed(b))), Mul((_renamed(a), b))
    inexact = has_decimal(a) or has_decimal(b)
    return "same equation" if _match_values(*cross, tol, inexact) else None


def _renamed(node: Node) -> Node:
    """`node` over a second, independent copy of its variables (x as x#)."""
    if isinstance(node, Sym):
        return Sym(node.name + "#")  # "#" is in no name the lexer reads
    if isinstance(node, Call):
        return Call(node.name + "#", node.args)
    if not children(node):
        return node
    fields = dataclasses.fields(node)
    return type(node)(*(_renamed_field(getattr(node, f.name)) for f in fields))


def _renamed_field(value):
    if isinstance(value, tuple):
        return tuple(_renamed_field(v) for v in value)
    return _renamed(value) if dataclasses.is_dataclass(value) else value


def assigned_value(node: Rel) -> Node | None:
    """The value a relation states: `x = 3`, `|PQ| = 2`, `x \\in [0, 1]`.

    A chain `v = 64/5 = 12.8`, or one of constants `12.8 = 64/5`, states a
    value only if its members are equal (strictly): `4/3 = 1.333` states none.
    In `v = 6\\sqrt{2} - 2 \\approx 6.49` the exact member is the value; in
    `v \\approx 6.49` the approximation is all there is.
    """
    ops, operands = node.ops, node.operands
    if "approx" in ops:
        cut = ops.index("approx")
        if any(op not in ("=", "approx") for op in ops[cut:]):
            return None
        if cut == 0:  # "x \\approx 2.08" or "\\frac{2}{7}\\sqrt{53} \\approx 2.08"
            first = operands[0]
            if is_label(first):
                return operands[1]
            return None if symbols(first) else first
        ops, operands = ops[:cut], operands[: cut + 1]
    first = operands[0]
    if ops == ("in",) and isinstance(first, Sym):
        return operands[1]
    if any(op != "=" for op in ops):
        return None
    if is_label(first):
        values = operands[1:]
    elif len(operands) == 2 and is_label(operands[1]) and not symbols(first):
        values = operands[:1]  # "12.8 = v"
    elif not any(symbols(x) for x in operands):
        values = operands
    else:
        return None
    if any(match(x, values[-1], STRICT) is None for x in values[:-1]):
        return None
    return values[-1]


def _match_rel(p: Rel, g: Rel, tol: Tol) -> str | None:
    pv, gv = assigned_value(p), assigned_value(g)
    if pv is not None and gv is not None and p.operands[0] == g.operands[0]:
        rule = match(pv, gv, tol)
        return f"assignment ({rule})" if rule else None
    read = _read_sets(p, g)
    if read is not None:  # 0 < x <= 4 against x \in (0, 4]: the sets they allow
        return _match_sets(*read, tol, has_decimal(p) or has_decimal(g))
    p, g = orient(p), orient(g)
    if p.ops != g.ops:
        return None
    if len(p.operands) == 2 and p.ops[0] in ("=", "<", "<=", "!="):
        # One relation: compare lhs - rhs up to a constant factor.
        fp = Add((p.operands[0], Neg(p.operands[1])))
        fg = Add((g.operands[0], Neg(g.operands[1])))
        rule = _match_line(fp, fg, tol, positive=p.ops[0] in ("<", "<="))
        if rule:
            return rule
    if all(match(x, y, tol) for x, y in zip(p.operands, g.operands)):
        return "same relation"
    if p.ops in (("=",), ("!=",)):
        if all(match(x, y, tol) for x, y in zip(p.operands, g.operands[::-1])):
            return "same relation"
    return None


def _match_rel_other(rel: Rel, other: Node, rel_is_pred: bool, tol: Tol):
    """A relation against a non-relation: `x = 3` vs 3, `x > 3` vs (3, oo)."""
    value = assigned_value(rel)
    if value is not None:
        if rel_is_pred:
            rule = match(value, bare_set(other), tol)
        else:
            rule = match(bare_set(other), value, tol)
        return f"assignment ({rule})" if rule else None
    read = _read_sets(rel, other) if rel_is_pred else _read_sets(other, rel)
    if read is not None:
        return _match_sets(*read, tol, has_decimal(rel) or has_decimal(other))
    return None


# ------------------------------------------------------- sets of reals
def _read_sets(p: Node, g: Node) -> tuple | None:
    """Both answers as (variable or None, sympy set), or None unless both
    denote sets of reals (`grading.sets`)."""
    if not (set_like(p) and set_like(g)):
        return None
    # Imported here: sympy takes ~0.5 s to load, paid only once an answer
    # may be a set (and not at all by a checker that never meets one).
    from rlvr_jax.reward.grading import sets

    read_p = sets.answer_set(p)
    read_g = sets.answer_set(g) if read_p is not None else None
    return None if read_g is None else (read_p, read_g)


def _match_sets(p: tuple, g: tuple, tol: Tol, inexact: bool) -> str | None:
    """Two sets of reals (`_read_sets`) are equal: sympy's canonical sets
    alike, or their intervals and points alike, bounds compared by the value
    rule (`_match_values`: exactly unless a side has a decimal)."""
    from rlvr_jax.reward.grading import sets

    (var_p, set_p), (var_g, set_g) = p, g
    if var_p is not None and var_g is not None and var_p != var_g:
        return None  # 0 < x <= 4 is not t \in (0, 4]
    rule = "solution set" if var_p or var_g else "same set"
    if set_p == set_g:
        return rule
    pieces_p, pieces_g = sets.pieces(set_p), sets.pieces(set_g)
    if pieces_p is None or pieces_g is None or len(pieces_p) != len(pieces_g):
        return None
    for a, b in zip(pieces_p, pieces_g):
        if (a.lo_closed, a.hi_closed) != (b.lo_closed, b.hi_closed):
            return None
        for x, y in ((a.lo, b.lo), (a.hi, b.hi)):
            if x != y and (OO in (x, y) or Neg(OO) in (x, y)):
                return None
            if x != y and _match_values(x, y, tol, inexact) is None:
                return None
    return f"{rule} (bounds)"


# ------------------------------------------------------ collections
def _match_items(ps: tuple, gs: tuple, tol: Tol, dedupe: bool) -> str | None:
    """Unordered match: a perfect matching between the two item lists."""
    if dedupe:
        ps, gs = _dedupe(ps, tol), _dedupe(gs, tol)
    if len(ps) != len(gs):
        return None
    n = len(ps)
    ok = [[match(p, g, tol) is not None for g in gs] for p in ps]
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


def _dedupe(items: tuple, tol: Tol) -> tuple:
    out: list = []
    for x in items:
        if not any(match(x, y, tol) for y in out):
            out.append(x)
    return tuple(out)


def _match_collections(p: Node, g: Node, tol: Tol) -> str | None:
    if isinstance(p, (List, Set)) and isinstance(g, (List, Set)):
        dedupe = isinstance(p, Set) or isinstance(g, Set)
        rule = _match_items(p.items, g.items, tol, dedupe)
        return f"{'set' if dedupe else 'list'}: {rule}" if rule else None
    single = p if isinstance(p, Set) else g if isinstance(g, Set) else None
    if single is not None and len(single.items) == 1:
        if single is p:
            return match(p.items[0], g, tol)
        return match(p, g.items[0], tol)
    return None


def _match_list_forms(p: Node, g: Node, tol: Tol) -> str | None:
    """A bare list read as what it spells out, or None to compare it as a list.

    `x < 2 or x > 3` against a union of intervals; `m = 12, n = 7` against
    the ordered (12, 7); "\\boxed{15\\frac{39}{40}} or \\boxed{\\frac{639}{40}}"
    against 639/40 (every item equal to the gold: one answer in two forms;
    a hedge "5 or 6" against 6 still fails).
    """
    lst, other, lst_is_pred = (p, g, True) if isinstance(p, List) else (g, p, False)

    def ordered(a, b):
        return match(a, b, tol) if lst_is_pred else match(b, a, tol)

    if isinstance(other, (Seq, Union)):
        read = _read_sets(p, g)
        if read is not None:
            return _match_sets(*read, tol, has_decimal(p) or has_decimal(g))
    if isinstance(other, Seq) and other.open == "(":
        values = labelled_values(lst)
        if values is not None:
            rule = ordered(Seq("(", ")", values), other)
            return f"labelled tuple ({rule})" if rule else None
    # One value restated in another form; a repeated item ("-2, -2") is a
    # multiplicity instead, and stays a list.
    restated = len(set(lst.items)) == len(lst.items)
    if lst_is_pred and restated and not isinstance(other, (List, Set)):
        if all(match(x, other, tol) for x in lst.items):
            return "every item equal"
    return None


def _match_vector(p: Node, g: Node, tol: Tol) -> str | None:
    """A one-row or one-column matrix against a tuple: (1, 2, 3), <1, 2, 3>."""
    mat, seq = (p, g) if isinstance(p, Mat) else (g, p)
    if (seq.open, seq.close) not in (("(", ")"), ("<", ">")):
        return None
    if len(mat.rows) != 1 and len(mat.rows[0]) != 1:
        return None
    entries = tuple(x for row in mat.rows for x in row)
    if len(entries) != len(seq.items):
        return None
    pairs = zip(entries, seq.items) if mat is p else zip(seq.items, entries)
    tol = _entries_tol(tol)
    return "vector" if all(match(x, y, tol) for x, y in pairs) else None


def _match_seq(p: Seq, g: Seq, tol: Tol) -> str | None:
    if (p.open, p.close) != (g.open, g.close) or len(p.items) != len(g.items):
        return None
    if all(match(x, y, tol) for x, y in zip(p.items, g.items)):
        return "interval" if len(p.items) == 2 and p.open != p.close else "tuple"
    return None


def _match_mat(p: Mat, g: Mat, tol: Tol) -> str | None:
    if len(p.rows) != len(g.rows) or len(p.rows[0]) != len(g.rows[0]):
        return None
    pairs = zip(itertools.chain(*p.rows), itertools.chain(*g.rows))
    tol = _entries_tol(tol)
    return "matrix" if all(match(x, y, tol) for x, y in pairs) else None


def _entries_tol(tol: Tol) -> Tol:
    return tol._replace(rounded=tol.rel > 0)


def match(p: Node, g: Node, tol: Tol) -> str | None:
    """The rule under which trees p (prediction) and g (gold) are equal, or None."""
    if isinstance(p, Rel) and isinstance(g, Rel):
        return _match_rel(p, g, tol)
    if isinstance(p, Rel):
        return _match_rel_other(p, g, True, tol)
    if isinstance(g, Rel):
        return _match_rel_other(g, p, False, tol)
    if isinstance(p, List) or isinstance(g, List):
        rule = _match_list_forms(p, g, tol)
        if rule is not None:
            return rule
    if isinstance(p, Union) or isinstance(g, Union):
        read = _read_sets(p, g)
        if read is not None:  # [1, 2] \cup [2, 3] is [1, 3]
            return _match_sets(*read, tol, has_decimal(p) or has_decimal(g))
        if type(p) is type(g) and _match_items(p.items, g.items, tol, dedupe=False):
            return "union"
        return None
    if isinstance(p, (List, Set)) or isinstance(g, (List, Set)):
        return _match_collections(p, g, tol)
    if type(p) is not type(g) and {type(p), type(g)} == {Seq, Mat}:
        return _match_vector(p, g, tol)
    if isinstance(p, Seq) or isinstance(g, Seq):
        return _match_seq(p, g, tol) if type(p) is type(g) else None
    if isinstance(p, Mat) or isinstance(g, Mat):
        return _match_mat(p, g, tol) if type(p) is type(g) else None
    if isinstance(p, Text) or isinstance(g, Text):
        return "text" if p == g else None
    if isinstance(p, EXPR) and isinstance(g, EXPR):
        return _match_expr(p, g, tol)
    return None

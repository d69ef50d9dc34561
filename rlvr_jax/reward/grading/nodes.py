"""The answer syntax tree: one frozen dataclass per node kind.

The parser (`grading.parser`) builds these from whitelisted tokens; nothing in
a tree is ever executed. Dataclasses rather than tuples because two kinds may
hold the same fields (a variable `e` and a word `e`, a set and a list of the
same items), and those must never compare equal.

    Num(value, is_decimal, places)  a literal; decimals are exact Fractions
    Based(digits, base, value)      52_8, a number written in base 8
    Sym(name)                       a variable: x, x_1, \\theta
    Const(name)                     pi, e, i (imaginary unit), oo
    Add(terms)  Mul(factors)        n-ary; subtraction is Neg
    Neg(x)  Div(num, den)  Pow(base, exp)
    Func(name, args)                sin, log, root, abs, fact, binom, ...
    Pm(left, right)                 left ± right (left may be None for ±right)
    Call(name, args)                f(x) on the left of "="
    List(items, conj)               a bare, unordered list: "1, 2" or "1 or 2"
    Seq(open, close, items)         a bracketed tuple or interval: (1, 2], <1, 2>
    Set(items)                      \\{1, 2\\}
    Union(items)                    A \\cup B
    Mat(rows)                       pmatrix / bmatrix / matrix / array
    Rel(ops, operands)              x = 3, 1 < x \\leq 2, x \\in [0, 1]
    Text(words)                     a word answer, case-folded
    Error(message)                  the text is outside the grammar
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Union as _U


@dataclass(frozen=True, slots=True)
class Num:
    value: Fraction
    is_decimal: bool = False
    # Decimal places as written: 3 for 0.667, 8 for 1.77e-6 (0 for integers).
    places: int = 0


@dataclass(frozen=True, slots=True)
class Based:
    digits: str
    base: int
    value: Fraction


@dataclass(frozen=True, slots=True)
class Sym:
    name: str


@dataclass(frozen=True, slots=True)
class Const:
    name: str  # "pi", "e", "i" or "oo"


@dataclass(frozen=True, slots=True)
class Add:
    terms: tuple


@dataclass(frozen=True, slots=True)
class Mul:
    factors: tuple


@dataclass(frozen=True, slots=True)
class Neg:
    x: Node


@dataclass(frozen=True, slots=True)
class Div:
    num: Node
    den: Node


@dataclass(frozen=True, slots=True)
class Pow:
    base: Node
    exp: Node


@dataclass(frozen=True, slots=True)
class Func:
    name: str
    args: tuple


@dataclass(frozen=True, slots=True)
class Pm:
    left: Node | None
    right: Node


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple


@dataclass(frozen=True, slots=True)
class List:
    items: tuple
    conj: bool = False  # joined by "and" somewhere ("x > 1 and x < 3")


@dataclass(frozen=True, slots=True)
class Seq:
    open: str
    close: str
    items: tuple


@dataclass(frozen=True, slots=True)
class Set:
    items: tuple


@dataclass(frozen=True, slots=True)
class Union:
    items: tuple


@dataclass(frozen=True, slots=True)
class Mat:
    rows: tuple  # of tuples, all of one length


@dataclass(frozen=True, slots=True)
class Rel:
    ops: tuple  # of "=", "<", "<=", ">", ">=", "!=", "in", "approx"
    operands: tuple  # one more than ops


@dataclass(frozen=True, slots=True)
class Text:
    words: str


@dataclass(frozen=True, slots=True)
class Error:
    message: str


Node = _U[
    Num, Based, Sym, Const, Add, Mul, Neg, Div, Pow, Func, Pm, Call, List, Seq,
    Set, Union, Mat, Rel, Text, Error,
]  # fmt: skip

# Kinds that denote one value (as opposed to collections and relations).
EXPR = (Num, Based, Sym, Const, Add, Mul, Neg, Div, Pow, Func, Pm, Call)
OO = Const("oo")


def num(value, is_decimal: bool = False, places: int = 0) -> Num:
    return Num(Fraction(value), is_decimal, places)


def mul(factors: list) -> Node:
    """A product, flattened; a single factor stands for itself."""
    flat = []
    for f in factors:
        flat.extend(f.factors if isinstance(f, Mul) else (f,))
    return flat[0] if len(flat) == 1 else Mul(tuple(flat))


def add(terms: list) -> Node:
    """A sum, flattened; a single term stands for itself."""
    flat = []
    for t in terms:
        flat.extend(t.terms if isinstance(t, Add) else (t,))
    return flat[0] if len(flat) == 1 else Add(tuple(flat))


def children(node: Node) -> tuple:
    """The direct subtrees of `node` (a leaf has none)."""
    get = _CHILDREN.get(type(node))
    return get(node) if get is not None else ()


# A table by type rather than a match statement: children() runs for every
# node of every tree walked, and a dict lookup is several times faster.
_CHILDREN = {
    Add: lambda n: n.terms,
    Mul: lambda n: n.factors,
    List: lambda n: n.items,
    Set: lambda n: n.items,
    Union: lambda n: n.items,
    Seq: lambda n: n.items,
    Neg: lambda n: (n.x,),
    Div: lambda n: (n.num, n.den),
    Pow: lambda n: (n.base, n.exp),
    Pm: lambda n: (n.right,) if n.left is None else (n.left, n.right),
    Func: lambda n: n.args,
    Call: lambda n: n.args,
    Rel: lambda n: n.operands,
    Mat: lambda n: tuple(x for row in n.rows for x in row),
}


def walk(node: Node):
    """Every node of the tree, root first (iterative: trees may be deep)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(children(n))


def call_key(node: Call) -> str:
    """The name a defined function's value is stored under: f(x) -> "f(x)"."""
    return f"{node.name}{node.args!r}"


def symbols(node: Node) -> set[str]:
    out = set()
    for n in walk(node):
        if isinstance(n, Sym):
            out.add(n.name)
        elif isinstance(n, Call):
            out.add(call_key(n))
    return out


def has_decimal(node: Node) -> bool:
    return any(isinstance(n, Num) and n.is_decimal for n in walk(node))

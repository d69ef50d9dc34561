"""Exact and numeric values of expression trees, guarded against blow-up.

`rational` computes the exact Fraction of a tree when it is rational and small;
`numeric` evaluates it at 192 bits in a private mpmath context (the global
`mpmath.mp` precision is left alone) with variables bound to generic points.
Every power, factorial and function argument is size-checked before it is
computed, so a hostile `10^{10^{10}}` is refused in microseconds; whatever
still takes long runs in the reward pool's killable worker.
"""

from __future__ import annotations

import math
import zlib
from fractions import Fraction

from mpmath.ctx_mp import MPContext

from rlvr_jax.reward.grading.nodes import (
    Add,
    Based,
    Call,
    Const,
    Div,
    Func,
    Mul,
    Neg,
    Node,
    Num,
    Pow,
    Sym,
    call_key,
)

# Guards on the size of values, in bits. Exact integers above MAX_EXACT_BITS
# fall back to floating point; floating values above MAX_FLOAT_BITS (about a
# million decimal digits of magnitude) are "too large to compare".
MAX_EXACT_BITS = 200_000
MAX_FLOAT_BITS = 1 << 22
_MAX_TRIG_BITS = 64
_MAX_FACTORIAL = 200_000

C = MPContext()
C.prec = 192


class Undefined(ArithmeticError):
    """The value is undefined or too large to compare at this point."""


EVAL_ERRORS = (Undefined, ZeroDivisionError, ValueError, OverflowError)


# --------------------------------------------------------------- exact
def bits(q: Fraction) -> int:
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
    if k < 1 or k > 64 or bits(x) > 4000:
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


def rational(node: Node) -> Fraction | None:
    """The exact value when `node` is rational and small enough, else None."""
    match node:
        case Num(value) | Based(_, _, value):
            return value
        case Neg(x):
            v = rational(x)
            return None if v is None else -v
        case Add(children) | Mul(children):
            is_add = isinstance(node, Add)
            total = Fraction(0) if is_add else Fraction(1)
            for child in children:
                v = rational(child)
                if v is None:
                    return None
                total = total + v if is_add else total * v
                if bits(total) > MAX_EXACT_BITS:
                    return None
            return total
        case Div(a, b):
            a, b = rational(a), rational(b)
            if a is None or b is None or b == 0:
                return None
            return a / b
        case Pow(base, exp):
            return _rational_pow(base, exp)
        case Func(name, args):
            return _rational_func(name, args)
    return None


def _rational_pow(base_node: Node, exp_node: Node) -> Fraction | None:
    exp = rational(exp_node)
    if exp is None:
        return None
    base = rational(base_node)
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
    if abs(n) * bits(base) > MAX_EXACT_BITS:
        return None
    return base**n


def _rational_func(name: str, args: tuple) -> Fraction | None:
    if name == "root":
        k = rational(args[1])
        x = rational(args[0])
        if x is None or k is None or k.denominator != 1:
            return None
        return _exact_root(x, int(k))
    values = [rational(a) for a in args]
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


# ------------------------------------------------------------- numeric
def _guard(x):
    if C.isnan(x):
        raise Undefined("nan")
    if not C.isinf(x) and C.mag(x) > MAX_FLOAT_BITS:
        raise Undefined("too large")
    return x


def is_real(x) -> bool:
    return not isinstance(x, C.mpc) or x.imag == 0


def real(x):
    if not is_real(x):
        raise Undefined("complex where a real is needed")
    return C.mpf(x.real) if isinstance(x, C.mpc) else x


def _as_int(x) -> int | None:
    if not is_real(x):
        return None
    x = real(x)
    if C.isinf(x) or C.mag(x) > 64 or x != C.floor(x):
        return None
    return int(x)


_CONSTANTS = {"pi": lambda: C.pi, "e": lambda: C.e, "i": lambda: C.j}


def numeric(node: Node, env: dict):
    """Evaluates an expression tree at the context's precision; raises Undefined.

    Args:
      node: an expression tree.
      env: a value for every variable name (and `call_key` of every Call).
    """
    match node:
        case Num(q) | Based(_, _, q):
            return C.mpf(q.numerator) / q.denominator
        case Const("oo"):
            return C.inf
        case Const(name):
            return _CONSTANTS[name]()
        case Sym(name):
            return env[name]
        case Call():
            return env[call_key(node)]
        case Neg(x):
            return -numeric(x, env)
        case Add(terms):
            total = C.mpf(0)
            for child in terms:
                total = _guard(total + numeric(child, env))
            return total
        case Mul(factors):
            total = C.mpf(1)
            for child in factors:
                total = _guard(total * numeric(child, env))
            return total
        case Div(a, b):
            a, b = numeric(a, env), numeric(b, env)
            if b == 0:
                raise Undefined("division by zero")
            return _guard(a / b)
        case Pow(base, exp):
            return _numeric_pow(base, exp, env)
        case Func(name, args):
            return _guard(_numeric_func(name, args, env))
    raise Undefined(f"{type(node).__name__} is not a number")


def _numeric_pow(base_node: Node, exp_node: Node, env: dict):
    base = numeric(base_node, env)
    exp = numeric(exp_node, env)
    if base == 0:
        if is_real(exp) and real(exp) > 0:
            return C.mpf(0)
        if exp == 0:
            return C.mpf(1)
        raise Undefined("0 to a non-positive power")
    if C.isinf(base) or C.isinf(exp):
        raise Undefined("infinite power")
    # |base^exp| ~ 2^(|exp| * log2|base|): refuse before computing a giant.
    if abs(exp) * (abs(C.mag(base)) + 1) > MAX_FLOAT_BITS:
        raise Undefined("power too large")
    if is_real(base) and real(base) < 0 and is_real(exp):
        # (-8)^(1/3) is -2 in school algebra: a real odd root, not the
        # principal complex one.
        q = rational(exp_node)
        if q is not None and q.denominator % 2 == 1:
            magnitude = C.power(-real(base), real(exp))
            return _guard(-magnitude if q.numerator % 2 else magnitude)
    return _guard(C.power(base, exp))


def _numeric_func(name: str, args: tuple, env: dict):
    if name == "root":
        x = numeric(args[0], env)
        k = numeric(args[1], env)
        if k == 0:
            raise Undefined("zeroth root")
        k_int = _as_int(k)
        if k_int is not None and k_int % 2 == 1 and is_real(x) and real(x) < 0:
            return -C.root(-real(x), k_int)
        if k_int == 2:
            return C.sqrt(x)
        return C.power(x, 1 / k)
    vals = [numeric(a, env) for a in args]
    x = vals[0]
    if name in ("sin", "cos", "tan", "cot", "sec", "csc"):
        if C.isinf(x) or C.mag(x) > _MAX_TRIG_BITS:
            raise Undefined("trig argument too large")
        if name == "cot":
            return C.cos(x) / _nonzero(C.sin(x))
        if name == "sec":
            return 1 / _nonzero(C.cos(x))
        if name == "csc":
            return 1 / _nonzero(C.sin(x))
        return getattr(C, name)(x)
    if name in ("asin", "acos", "atan"):
        return getattr(C, name)(x)
    if name in ("sinh", "cosh", "tanh", "exp"):
        if C.isinf(x) or abs(x) > MAX_FLOAT_BITS // 2:
            raise Undefined("exponential too large")
        return getattr(C, name)(x)
    if name == "log":
        if x == 0 or C.isinf(x):
            raise Undefined("log of 0 or infinity")
        y = C.log(x)
        if len(vals) == 2:
            base = C.log(_nonzero(vals[1]))
            y = y / _nonzero(base)
        return y
    if name == "abs":
        return abs(x)
    if name in ("floor", "ceil"):
        x = real(x)
        if C.isinf(x):
            raise Undefined("floor of infinity")
        return C.floor(x) if name == "floor" else C.ceil(x)
    if name == "fact":
        n = _as_int(x)
        if n is not None and n < 0:
            raise Undefined("factorial of a negative integer")
        if not is_real(x) or abs(x) > _MAX_FACTORIAL:
            raise Undefined("factorial argument too large")
        return C.factorial(x)
    if name == "binom":
        if abs(x) > _MAX_FACTORIAL or abs(vals[1]) > _MAX_FACTORIAL:
            raise Undefined("binomial argument too large")
        return C.binomial(x, vals[1])
    if name in ("max", "min"):
        reals = [real(v) for v in vals]
        return max(reals) if name == "max" else min(reals)
    if name in ("gcd", "lcm"):
        ints = [_as_int(v) for v in vals]
        if any(v is None for v in ints):
            raise Undefined(f"{name} of non-integers")
        return C.mpf(math.gcd(*ints) if name == "gcd" else math.lcm(*ints))
    raise Undefined(f"unknown function {name}")


def _nonzero(x):
    if x == 0:
        raise Undefined("division by zero")
    return x


# ---------------------------------------------------------- test points
# Magnitudes from below 1 to about 30, both signs, so that piecewise-constant
# answers (floor, ceil) and sign-sensitive ones (|x| vs x) are told apart.
POINT_SCALES = (0.6, 1.7, 4.3, 13.1, 29.3, -0.8, -3.7)


def point_value(name: str, k: int):
    """A generic, irrational value for variable `name` at test point k."""
    h = zlib.crc32(f"{name}#{k}".encode())
    return POINT_SCALES[k] * C.sqrt(1 + C.mpf(h) / 2**32)


def env_at(names, k: int) -> dict:
    return {name: point_value(name, k) for name in names}

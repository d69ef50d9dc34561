"""Exact and numeric values of expression trees, guarded against blow-up.

`rational` computes the exact Fraction of a tree when it is rational and small;
`numeric` evaluates it at 192 bits in a private mpmath context (the global
`mpmath.mp` precision is left alone) with variables bound to generic points.
`equal_at` decides whether two trees have the same exact value at a point
without any tolerance: it raises the precision until the difference is
resolved or shown to be rounding noise (1/3000! is not 1/3001!, nor
sqrt(2) + 10^-400 sqrt(2)). Every power, factorial and function argument is
size-checked before it is computed, so a hostile `10^{10^{10}}` is refused in
microseconds; whatever still takes long runs in the reward pool's killable
worker.
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
# `equal_at`: errors may grow by this many bits through an evaluation (powers
# and exponentials amplify them by at most ~22 bits under the guards above);
# two evaluations agreeing to _STABLE_BITS are one real value; precision is
# never raised past MAX_EXACT_PREC bits (values that need more are refused).
_SLACK_BITS = 64
_STABLE_BITS = 32
MAX_EXACT_PREC = 1 << 14
# A sum or a function whose result is this many bits below its inputs has
# cancelled: its relative error is no longer the working precision's.
_LOSS_BITS = 8

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


class _Trace:
    """What one evaluation met (for `equal_at`): every value, children first;
    the terms of every sum, and the pairs (1, x) of every function that
    swallows a small x into a value near 1 (e^x, cos x, b^x); whether a sum
    or a function cancelled."""

    __slots__ = ("values", "sums", "lossy")

    def __init__(self):
        self.values: list = []
        self.sums: list = []
        self.lossy = False

    def note_loss(self, inputs, out) -> None:
        """Records a cancellation: `out` far below the largest of `inputs`."""
        mags = [m for m in map(_mag, inputs) if m is not None]
        if mags:
            m = _mag(out)
            self.lossy = self.lossy or m is None or max(mags) - m > _LOSS_BITS


def _mag(x) -> int | None:
    """About log2 |x| (mpmath's `mag`), or None for 0 and infinities."""
    if x == 0 or C.isinf(x):
        return None
    return int(C.mag(x))


def numeric(node: Node, env: dict, trace: _Trace | None = None):
    """Evaluates an expression tree at the context's precision; raises Undefined.

    Args:
      node: an expression tree.
      env: a value for every variable name (and `call_key` of every Call).
      trace: where `equal_at` collects what the evaluation met; None else.
    """
    value = _numeric(node, env, trace)
    if trace is not None:
        trace.values.append(value)
    return value


def _numeric(node: Node, env: dict, trace: _Trace | None):
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
            return -numeric(x, env, trace)
        case Add(terms):
            values = []
            total = C.mpf(0)
            for child in terms:
                values.append(numeric(child, env, trace))
                total = _guard(total + values[-1])
            if trace is not None:
                trace.sums.append(values)
                trace.note_loss(values, total)
            return total
        case Mul(factors):
            total = C.mpf(1)
            for child in factors:
                total = _guard(total * numeric(child, env, trace))
            return total
        case Div(a, b):
            a, b = numeric(a, env, trace), numeric(b, env, trace)
            if b == 0:
                raise Undefined("division by zero")
            return _guard(a / b)
        case Pow(base, exp):
            return _numeric_pow(base, exp, env, trace)
        case Func(name, args):
            return _guard(_numeric_func(name, args, env, trace))
    raise Undefined(f"{type(node).__name__} is not a number")


def _numeric_pow(base_node: Node, exp_node: Node, env: dict, trace: _Trace | None):
    base = numeric(base_node, env, trace)
    exp = numeric(exp_node, env, trace)
    if trace is not None:
        trace.sums.append([C.one, exp])  # 2^(10^-50) is 1 + 7e-51
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


def _numeric_func(name: str, args: tuple, env: dict, trace: _Trace | None):
    vals = [numeric(a, env, trace) for a in args]
    x = vals[0]
    if name == "root":
        k = vals[1]
        if k == 0:
            raise Undefined("zeroth root")
        k_int = _as_int(k)
        if k_int is not None and k_int % 2 == 1 and is_real(x) and real(x) < 0:
            return -C.root(-real(x), k_int)
        if k_int == 2:
            return C.sqrt(x)
        return C.power(x, 1 / k)
    if name in ("sin", "cos", "tan", "cot", "sec", "csc"):
        if C.isinf(x) or C.mag(x) > _MAX_TRIG_BITS:
            raise Undefined("trig argument too large")
        sin = C.sin(x) if name in ("sin", "tan", "cot", "csc") else None
        cos = C.cos(x) if name in ("cos", "tan", "cot", "sec") else None
        if trace is not None:
            # Near a zero of sin or cos the result is all rounding error of
            # x; cos(10^-50) is 1 - 5e-101.
            for value in (sin, cos):
                if value is not None:
                    trace.note_loss([x], value)
            trace.sums.append([C.one, x])
        if name in ("sin", "cos"):
            return sin if name == "sin" else cos
        if name == "tan":
            return sin / _nonzero(cos)
        if name == "cot":
            return cos / _nonzero(sin)
        return 1 / _nonzero(cos if name == "sec" else sin)
    if name in ("asin", "acos", "atan"):
        y = getattr(C, name)(x)
        if trace is not None:
            # acos(1 - noise) is far from its true 0; acos(10^-50) and
            # atan(10^50) are pi/2 and a sliver.
            if name == "acos":
                trace.note_loss([C.one], y)
            trace.sums.append([C.one, x if name != "atan" or x == 0 else 1 / x])
        return y
    if name in ("sinh", "cosh", "tanh", "exp"):
        if C.isinf(x) or abs(x) > MAX_FLOAT_BITS // 2:
            raise Undefined("exponential too large")
        if trace is not None:
            trace.sums.append([C.one, x])  # e^(10^-50) is 1 + 1e-50
        return getattr(C, name)(x)
    if name == "log":
        if x == 0 or C.isinf(x):
            raise Undefined("log of 0 or infinity")
        y = C.log(x)
        logs = [y]
        if len(vals) == 2:
            base = C.log(_nonzero(vals[1]))
            logs.append(base)
            y = y / _nonzero(base)
        if trace is not None:
            for value in logs:  # log(1 + noise) is all noise
                trace.note_loss([C.one], value)
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


# ------------------------------------------------------- exact equality
def equal_at(a: Node, b: Node, names, k: int) -> bool:
    """Whether trees a and b have the same exact value at test point k.

    No tolerance: the difference d = a - b is computed at rising precision
    until it is resolved. It is real (not equal) once it stands above the
    rounding noise (relative to a and b, or, after a cancellation, to the
    largest value met) or reads the same at two precisions (1/3000! against
    1/3001!, pi 10^-5000 against 0). It is a zero (equal) once it stays in
    the noise at a precision that resolves every sum's terms twice over (2
    times the bits between a sum's largest term and its smallest real one,
    plus slack): sqrt(2) + 10^-400 against sqrt(2) is raised to ~2800 bits
    and differs there, while sin(pi) against 0, whose only small value is
    noise that shrinks with the precision, is equal at 384 bits. Values that
    would need more than MAX_EXACT_PREC bits (3000! + 1 against 3000!) raise
    Undefined: they are not compared.

    Args:
      a, b: expression trees.
      names: the variables of a and b.
      k: the test point (`env_at`).

    Returns:
      True when a and b are equal, to the best of a numerical decision.

    Raises:
      Undefined (or another of EVAL_ERRORS) when either side has no value
      at the point, or the decision needs more than MAX_EXACT_PREC bits.
    """
    prec, before, before_d = C.prec, None, None
    while True:
        with C.workprec(prec):
            env = env_at(names, k)
            trace = _Trace()
            va, vb = numeric(a, env, trace), numeric(b, env, trace)
            if C.isinf(va) or C.isinf(vb):
                return va == vb
            d = va - vb
        # Without a cancellation, a and b carry the precision's relative error.
        sizes = (va, vb) if not trace.lossy else trace.values
        scale = max((m for m in map(_mag, sizes) if m is not None), default=0)
        if d != 0 and C.mag(d) > scale - prec + _SLACK_BITS:
            return False  # above any rounding noise
        if before is not None and d != 0 and _agree(d, before_d):
            return False  # the same at two precisions: a real difference
        real_terms = None
        if before is not None and len(before.sums) == len(trace.sums):
            real_terms = before.sums
        need = 2 * _sum_spread(trace.sums, real_terms) + 2 * _SLACK_BITS
        if prec >= need and (before is not None or not trace.lossy):
            return True  # within the noise at a precision that resolves all
        nxt = max(2 * prec, need)
        if nxt > MAX_EXACT_PREC:
            raise Undefined("too many bits to decide equality")
        prec, before, before_d = nxt, trace, d


def _agree(x, y) -> bool:
    """x and y (from two precisions) share their leading _STABLE_BITS bits."""
    return x != 0 and y != 0 and abs(x - y) <= C.ldexp(abs(x), -_STABLE_BITS)


def _sum_spread(sums: list, previous: list | None) -> int:
    """The widest span, in bits, between a sum's largest term and its smallest
    real one (one that reads the same in `previous`, the sums at a lower
    precision, when given; rounding noise does not)."""
    widest = 0
    for i, terms in enumerate(sums):
        mags = [_mag(t) for t in terms]
        top = max((m for m in mags if m is not None), default=None)
        if top is None:
            continue
        for j, m in enumerate(mags):
            if m is None:
                continue
            if previous is not None:
                earlier = previous[i]
                if len(earlier) != len(terms) or not _agree(terms[j], earlier[j]):
                    continue
            widest = max(widest, top - m)
    return widest


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

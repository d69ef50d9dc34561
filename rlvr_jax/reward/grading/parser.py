"""Recursive-descent parser: whitelisted tokens to a typed syntax tree.

The tree (`grading.nodes`) is inert: it is evaluated later by `grading.values`
with explicit size guards, never by `eval`, `sympify` or a parser that runs
Python. `parse` is the entry point; it caches results, failures included,
because a training step parses one gold and many identical predictions.
"""

from __future__ import annotations

import functools
from fractions import Fraction

from rlvr_jax.reward.grading import lexer
from rlvr_jax.reward.grading.lexer import (
    MAX_CHARS,
    MAX_DEPTH,
    MAX_DIGITS,
    MAX_ITEMS,
    GrammarError,
    Token,
    is_text_answer,
    merge_thousands,
    text_key,
    tokenize,
)
from rlvr_jax.reward.grading.nodes import (
    OO,
    Based,
    Call,
    Const,
    Div,
    Error,
    Func,
    List,
    Mat,
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
    add,
    mul,
    num,
)

_EOF = Token("eof", None, False)
_RELOPS = frozenset({"=", "<", ">", "<=", ">=", "!=", "in", "approx"})
_PRIMARY_START_KINDS = frozenset(
    {"num", "letter", "sym", "const", "cmd", "func", "begin", "reals", "empty"}
)


def _is_unit_word(tok: Token) -> bool:
    kind, value, _ = tok
    if kind == "text":
        return True
    if kind == "word":
        if value.isupper():  # an acronym such as SRMC is a product of symbols
            return False
        return len(value) >= 4 or value.casefold() in lexer.UNIT_WORDS
    return False


def _num_value(raw: str) -> tuple[Fraction, bool, int]:
    """Exact value of a numeric literal, whether it was written as a decimal,
    and its decimal places as written (1.77e-6: 8)."""
    mant, _, exp = raw.lower().partition("e")
    if mant.endswith("."):
        mant = mant[:-1]
    try:
        value = Fraction(mant)
    except ValueError:
        raise GrammarError(f"bad number {raw!r}") from None
    is_decimal = "." in raw or bool(exp)
    places = len(mant.partition(".")[2])
    if exp:
        e = int(exp)
        if abs(e) > MAX_DIGITS:
            raise GrammarError("exponent too large")
        value *= Fraction(10) ** e
        places -= e
    return value, is_decimal, places


class _Parser:
    """Recursive descent over the token list; builds the typed tree."""

    def __init__(self, tokens: list[Token]):
        self.toks = merge_thousands(tokens)
        self.i = 0
        self.depth = 0
        self.abs_depth = 0
        self.element_start = 0
        self.saw_and = False  # an "and" joined items somewhere

    # -- token helpers -----------------------------------------------------
    def peek(self, k: int = 0) -> Node:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else _EOF

    def take(self) -> Node:
        tok = self.peek()
        self.i += 1
        return tok

    def at_op(self, *values: str) -> bool:
        kind, value, _ = self.peek()
        return kind == "op" and value in values

    def expect_op(self, value: str) -> None:
        if not self.at_op(value):
            raise GrammarError(f"expected {value!r}, got {self.peek()[1]!r}")
        self.i += 1

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise GrammarError("expression nested too deeply")

    # -- grammar -------------------------------------------------------------
    def parse_answer(self) -> Node:
        items = self.parse_items(closers=())
        if self.peek() is not _EOF:
            raise GrammarError(f"unexpected {self.peek()[1]!r}")
        if len(items) == 1:
            return items[0]
        return List(tuple(items), conj=self.saw_and)

    def parse_items(self, closers: tuple) -> list:
        items = [self.parse_element()]
        while True:
            kind, value, _ = self.peek()
            if kind == "sep" or (kind == "op" and value in (",", ";")):
                self.saw_and = self.saw_and or value == "and"
                self.i += 1
                if self.peek() is _EOF or self.at_op(*closers):
                    break  # a trailing separator, "1, 2,"
                items.append(self.parse_element())
                if len(items) > MAX_ITEMS:
                    raise GrammarError("too many items")
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

    def parse_element(self) -> Node:
        self.skip_units()
        if self.at_op("="):  # "\text{Area} = 12": the label was dropped
            self.i += 1
        self.element_start = self.i
        node = self.parse_relation()
        self.skip_units()
        return node

    def parse_relation(self) -> Node:
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
        return Rel(tuple(ops), tuple(operands))

    def parse_union(self) -> Node:
        items = [self.parse_sum()]
        while self.at_op("cup"):
            self.i += 1
            items.append(self.parse_sum())
        return items[0] if len(items) == 1 else Union(tuple(items))

    def parse_sum(self) -> Node:
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
                terms.append(Neg(term))
            else:
                terms = [Pm(add(terms), term)]
        return add(terms)

    def parse_term(self) -> Node:
        self.enter()
        kind, value, _ = self.peek()
        if kind == "op" and value in ("-", "+", "pm", "mp"):
            self.i += 1
            inner = self.parse_term()
            self.depth -= 1
            if value == "-":
                return Neg(inner)
            if value == "+":
                return inner
            return Pm(None, inner)
        factors = [self.parse_mixed_or_postfix()]
        while True:
            if self.at_op("*"):
                self.i += 1
                factors.append(self.parse_signed_factor())
            elif self.at_op("/", ":"):
                self.i += 1
                factors = [Div(mul(factors), self.parse_signed_factor())]
            elif self.starts_implicit_factor():
                factors.append(self.parse_postfix())
            else:
                break
        self.depth -= 1
        return mul(factors)

    def parse_signed_factor(self) -> Node:
        if self.at_op("-"):
            self.i += 1
            return Neg(self.parse_signed_factor())
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

    def parse_mixed_or_postfix(self) -> Node:
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
                    return num(whole + Fraction(top, bottom))
        return self.parse_postfix()

    def try_mixed_frac(self) -> Node | None:
        start = self.i
        whole = int(self.take()[1])
        self.i += 1  # \frac
        top = self.parse_frac_arg()
        bottom = self.parse_frac_arg()
        if (
            isinstance(top, Num)
            and isinstance(bottom, Num)
            and not top.is_decimal
            and not bottom.is_decimal
            and top.value.denominator == 1
            and bottom.value.denominator == 1
            and 0 < top.value < bottom.value
            and not self.at_op("^")
        ):
            return num(whole + top.value / bottom.value)
        self.i = start
        return None

    def parse_postfix(self) -> Node:
        node = self.parse_primary()
        while True:
            if self.at_op("!"):
                self.i += 1
                node = Func("fact", (node,))
            elif self.at_op("^"):
                self.i += 1
                node = Pow(node, self.parse_script())
            elif self.at_op("'") and isinstance(node, Sym):
                self.i += 1
                node = Sym(node.name + "'")
            else:
                return node

    def parse_script(self) -> Node:
        """The argument of ^: a group, or one token (a whole number, per intent)."""
        self.enter()
        kind, value, _ = self.peek()
        if kind == "op" and value == "{":
            node = self.parse_group("{", "}")
        elif kind == "op" and value == "-":
            self.i += 1
            node = Neg(self.parse_script())
        elif kind == "op" and value == "(":
            node = self.parse_primary()
        elif kind == "num":
            self.i += 1
            node = num(*_num_value(value))
        elif kind in ("letter", "sym", "const", "cmd", "func"):
            node = self.parse_primary()
        else:
            raise GrammarError("bad exponent")
        self.depth -= 1
        return node

    def parse_frac_arg(self) -> Node:
        """An argument of \\frac or \\binom: a group or a single digit/letter."""
        kind, value, space = self.peek()
        if kind == "op" and value == "{":
            return self.parse_group("{", "}")
        if kind == "num":
            self.i += 1
            if len(value) > 1 and value[:2].isdigit():
                # \frac12 is \frac{1}{2}: a bare argument is one character.
                self.toks.insert(self.i, Token("num", value[1:], False))
                value = value[0]
            return num(*_num_value(value))
        if kind in ("letter", "sym", "const", "cmd") or (kind, value) == ("op", "("):
            return self.parse_primary()
        raise GrammarError("bad \\frac argument")

    def parse_group(self, opener: str, closer: str) -> Node:
        self.expect_op(opener)
        self.enter()
        items = self.parse_items(closers=(closer,))
        self.expect_op(closer)
        self.depth -= 1
        return items[0] if len(items) == 1 else List(tuple(items))

    def parse_primary(self) -> Node:
        self.enter()
        node = self._primary()
        self.depth -= 1
        return node

    def _primary(self) -> Node:
        kind, value, _ = tok = self.take()
        if kind == "num":
            return self.finish_number(value)
        if kind == "letter":
            return self.finish_letter(value)
        if kind == "sym":
            return Sym(value + self.subscript())
        if kind == "const":
            return Const(value)
        if kind == "reals":
            return Seq("(", ")", (Neg(OO), OO))
        if kind == "empty":
            return Set(())
        if kind == "word":
            if _is_unit_word(tok) or (
                not value.isupper() and value.casefold() in lexer.SHORT_WORDS
            ):
                raise GrammarError(f"word {value!r} inside an expression")
            factors = [self.finish_letter(c, subscript=False) for c in value]
            return mul(factors)
        if kind == "func":
            return self.finish_function(lexer.FUNCS.get(value, value))
        if kind == "cmd":
            return self.finish_command(value)
        if kind == "begin":
            return self.finish_matrix(value)
        if kind == "op":
            return self.finish_bracket(value)
        raise GrammarError(f"unexpected {value!r}")

    def finish_number(self, raw: str) -> Node:
        value, is_decimal, places = _num_value(raw)
        nxt = self.peek()
        if nxt[:2] == ("op", "_") and raw.isdigit():
            # 52_8: digits in base 8, kept apart from the decimal 52.
            base_text = self.subscript()[1:].strip("{}").strip()
            if not base_text.isdigit() or not 2 <= int(base_text) <= 36:
                raise GrammarError("bad number base")
            base = int(base_text)
            if any(int(d) >= base for d in raw):
                raise GrammarError(f"digit out of range for base {base}")
            return Based(raw.lstrip("0") or "0", base, Fraction(int(raw, base)))
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
                raise GrammarError("bad repeating decimal")
            self.i += 4
            rep = group[1][1]
            body = raw.split(".")[1]
            value += Fraction(int(rep), 10 ** len(rep) - 1) / 10 ** len(body)
            return Num(value, False)
        return Num(value, is_decimal, places)

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
                    raise GrammarError("unclosed subscript")
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
        raise GrammarError("bad subscript")

    def finish_letter(self, letter: str, subscript: bool = True) -> Node:
        sub = self.subscript() if subscript else ""
        if sub:
            return Sym(letter + sub)
        if letter == "e":
            return Const("e")
        if letter == "i":
            return Const("i")
        if (
            subscript
            and self.i - 1 == self.element_start
            and self.at_op("(")
            and not self.peek()[2]
        ):
            call = self.try_call(letter)
            if call is not None:
                return call
        return Sym(letter)

    def try_call(self, name: str) -> Node | None:
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
        return Call(name, tuple(args))

    def finish_function(self, name: str) -> Node:
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
                raise GrammarError(f"{name} without an argument")
            args = [mul(factors)]
        if name in ("gcd", "lcm", "max", "min"):
            if len(args) == 1 and isinstance(args[0], List):
                args = list(args[0].items)
            if len(args) < 2:
                raise GrammarError(f"{name} needs two or more arguments")
        elif len(args) != 1:
            raise GrammarError(f"{name} takes one argument")
        if name == "log" and base is not None:
            node = Func("log", (args[0], base))
        elif name == "ln":
            node = Func("log", (args[0],))
        elif name == "log10":
            node = Func("log", (args[0], num(10)))
        else:
            node = Func(name, tuple(args))
        if power is not None:
            if power == Neg(num(1)) and name in lexer.INVERSE:
                return Func(lexer.INVERSE[name], tuple(args))
            node = Pow(node, power)
        return node

    def finish_command(self, name: str) -> Node:
        if name == "frac":
            top = self.parse_frac_arg()
            bottom = self.parse_frac_arg()
            return Div(top, bottom)
        if name == "binom":
            top = self.parse_frac_arg()
            bottom = self.parse_frac_arg()
            return Func("binom", (top, bottom))
        if name == "sqrt":
            index = num(2)
            if self.at_op("["):
                index = self.parse_group("[", "]")
            return Func("root", (self.parse_frac_arg(), index))
        raise GrammarError(f"unexpected \\{name}")

    def finish_bracket(self, value: str) -> Node:
        if value in ("(", "["):
            self.enter()
            items = self.parse_items(closers=(")", "]"))
            closer = self.take()
            if closer[0] != "op" or closer[1] not in (")", "]"):
                raise GrammarError("unclosed bracket")
            self.depth -= 1
            if len(items) == 1 and (value, closer[1]) in (("(", ")"), ("[", "]")):
                return items[0]  # grouping, not a 1-tuple
            return Seq(value, closer[1], tuple(items))
        if value == "{":
            self.i -= 1
            return self.parse_group("{", "}")
        if value == "\\{":
            if self.at_op("\\}"):
                self.i += 1
                return Set(())
            self.enter()
            items = self.parse_items(closers=("\\}",))
            self.expect_op("\\}")
            self.depth -= 1
            return Set(tuple(items))
        if value == "langle":
            self.enter()
            items = self.parse_items(closers=("rangle",))
            self.expect_op("rangle")
            self.depth -= 1
            return Seq("<", ">", tuple(items))
        if value == "|":
            self.abs_depth += 1
            inner = self.parse_sum()
            self.abs_depth -= 1
            self.expect_op("|")
            return Func("abs", (inner,))
        if value in ("lfloor", "lceil"):
            inner = self.parse_sum()
            closer = "rfloor" if value == "lfloor" else "rceil"
            self.expect_op(closer)
            return Func("floor" if value == "lfloor" else "ceil", (inner,))
        raise GrammarError(f"unexpected {value!r}")

    def finish_matrix(self, env: str) -> Node:
        rows = []
        row = []
        self.enter()
        while True:
            kind, value, _ = self.peek()
            if kind == "end":
                if value != env:
                    raise GrammarError("mismatched environment")
                self.i += 1
                break
            if kind == "eof":
                raise GrammarError("unclosed environment")
            row.append(self.parse_sum())
            kind, value, _ = self.peek()
            if kind == "op" and value == "&":
                self.i += 1
            elif kind == "rowsep":
                self.i += 1
                rows.append(tuple(row))
                row = []
            if len(rows) > MAX_ITEMS or len(row) > MAX_ITEMS:
                raise GrammarError("matrix too large")
        if row:
            rows.append(tuple(row))
        self.depth -= 1
        if not rows or any(len(r) != len(rows[0]) for r in rows):
            raise GrammarError("ragged matrix")
        return Mat(tuple(rows))


def parse(answer: str) -> Node:
    """Parses a normalised answer into a typed tree (`grading.nodes`).

    Results, including failures, are cached: during training the same gold and
    many identical predictions are parsed over and over.

    Args:
      answer: an answer already passed through `normalize`.

    Returns:
      The tree, or `Error(message)` when the answer is outside the grammar.
    """
    if not answer:
        return Error("empty answer")
    if len(answer) > MAX_CHARS:
        return Error("answer too long")  # checked before the cache sees it
    return _parse_cached(answer)


@functools.lru_cache(maxsize=8192)
def _parse_cached(answer: str) -> Node:
    try:
        tokens = tokenize(answer)
        if is_text_answer(tokens):
            words = " ".join(str(v) for k, v, _ in tokens if k in ("text", "word"))
            return Text(text_key(words))
        return _Parser(tokens).parse_answer()
    except GrammarError as err:
        return Error(str(err))
    except RecursionError:
        return Error("expression nested too deeply")


def clear_cache() -> None:
    """Forgets cached parses (for benchmarks that time cold parsing)."""
    _parse_cached.cache_clear()

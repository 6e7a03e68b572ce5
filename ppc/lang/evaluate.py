"""Integer expression evaluation with positions in every error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ppc.errors import ScheduleError
from ppc.lang import ast
from ppc.lang.limits import MAX_VALUE


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """Names visible to an expression, plus the built-in functions."""

    names: Mapping[str, int]
    functions: Mapping[str, Callable[..., int]] = field(default_factory=dict)

    def with_name(self, name: str, value: int) -> Scope:
        return Scope(names={**self.names, name: value}, functions=self.functions)


def _floordiv(a: int, b: int) -> int:
    return a // b


def _mod(a: int, b: int) -> int:
    return a % b


_ARITH: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": _floordiv,
    "%": _mod,
    "==": lambda a, b: int(a == b),
    "!=": lambda a, b: int(a != b),
    "<": lambda a, b: int(a < b),
    "<=": lambda a, b: int(a <= b),
    ">": lambda a, b: int(a > b),
    ">=": lambda a, b: int(a >= b),
}

BASE_FUNCTIONS: dict[str, Callable[..., int]] = {
    "min": lambda *args: min(args),
    "max": lambda *args: max(args),
    "abs": lambda x: abs(x),
}


Compiled = Callable[[Scope], int]
_COMPILED: dict[int, tuple[ast.Expr, Compiled]] = {}


def evaluate(expr: ast.Expr, scope: Scope) -> int:
    """The integer value of `expr`; booleans are 1/0. Raises ScheduleError at expr's position.

    Each expression is compiled once into nested closures (expansion evaluates the same
    few expressions hundreds of thousands of times at R=64, M=512)."""
    entry = _COMPILED.get(id(expr))
    if entry is None or entry[0] is not expr:
        entry = _COMPILED[id(expr)] = (expr, _compile(expr))
    return entry[1](scope)


def _compile(expr: ast.Expr) -> Compiled:
    if isinstance(expr, ast.Num):
        value = expr.value
        return lambda scope: value
    if isinstance(expr, ast.Name):
        name = expr.id

        def lookup(scope: Scope) -> int:
            try:
                return scope.names[name]
            except KeyError:
                return _lookup(expr, scope)

        return lookup
    if isinstance(expr, ast.Unary):
        operand = _compile(expr.operand)
        if expr.op == "-":
            return lambda scope: -operand(scope)
        return lambda scope: int(not operand(scope))
    if isinstance(expr, ast.BinOp):
        return _compile_binop(expr)
    return lambda scope: _call(expr, scope)


def _lookup(expr: ast.Name, scope: Scope) -> int:
    if expr.id not in scope.names:
        known = ", ".join(sorted(scope.names))
        raise ScheduleError(f"unknown name {expr.id!r} (known here: {known})", pos=expr.pos)
    return scope.names[expr.id]


def _compile_binop(expr: ast.BinOp) -> Compiled:
    left, right = _compile(expr.left), _compile(expr.right)
    if expr.op == "and":
        return lambda scope: int(bool(left(scope)) and bool(right(scope)))
    if expr.op == "or":
        return lambda scope: int(bool(left(scope)) or bool(right(scope)))
    apply = _ARITH[expr.op]
    if expr.op == "*":  # the one operator that can grow a value fast (x * x * x ...)
        return _bounded_product(expr, left, right)
    if expr.op not in ("//", "%"):
        return lambda scope: apply(left(scope), right(scope))

    def divide(scope: Scope) -> int:
        a, b = left(scope), right(scope)
        if b == 0:
            raise ScheduleError(f"division by zero in {expr.op}", pos=expr.pos)
        return apply(a, b)

    return divide


def _bounded_product(expr: ast.BinOp, left: Compiled, right: Compiled) -> Compiled:
    def product(scope: Scope) -> int:
        value = left(scope) * right(scope)
        if -MAX_VALUE <= value <= MAX_VALUE:
            return value
        raise ScheduleError("product out of range: its magnitude exceeds 2**63", pos=expr.pos)

    return product


def _call(expr: ast.Call, scope: Scope) -> int:
    function = scope.functions.get(expr.func)
    if function is None:
        known = ", ".join(sorted(scope.functions))
        raise ScheduleError(f"unknown function {expr.func!r} (known: {known})", pos=expr.pos)
    args = [evaluate(a, scope) for a in expr.args]
    try:
        return int(function(*args))
    except TypeError:
        raise ScheduleError(
            f"wrong number of arguments to {expr.func}() ({len(args)} given)", pos=expr.pos
        ) from None
    except (ValueError, IndexError) as error:
        raise ScheduleError(f"{expr.func}(): {error}", pos=expr.pos) from None

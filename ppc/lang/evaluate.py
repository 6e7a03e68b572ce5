"""Integer expression evaluation with positions in every error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ppc.errors import ScheduleError
from ppc.lang import ast


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


def evaluate(expr: ast.Expr, scope: Scope) -> int:
    """The integer value of `expr`; booleans are 1/0. Raises ScheduleError at expr's position."""
    if isinstance(expr, ast.Num):
        return expr.value
    if isinstance(expr, ast.Name):
        return _lookup(expr, scope)
    if isinstance(expr, ast.Unary):
        value = evaluate(expr.operand, scope)
        return -value if expr.op == "-" else int(not value)
    if isinstance(expr, ast.BinOp):
        return _binop(expr, scope)
    return _call(expr, scope)


def _lookup(expr: ast.Name, scope: Scope) -> int:
    if expr.id not in scope.names:
        known = ", ".join(sorted(scope.names))
        raise ScheduleError(f"unknown name {expr.id!r} (known here: {known})", pos=expr.pos)
    return scope.names[expr.id]


def _binop(expr: ast.BinOp, scope: Scope) -> int:
    left = evaluate(expr.left, scope)
    if expr.op == "and":
        return int(bool(left) and bool(evaluate(expr.right, scope)))
    if expr.op == "or":
        return int(bool(left) or bool(evaluate(expr.right, scope)))
    right = evaluate(expr.right, scope)
    if expr.op in ("//", "%") and right == 0:
        raise ScheduleError(f"division by zero in {expr.op}", pos=expr.pos)
    return _ARITH[expr.op](left, right)


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

"""AST of the schedule language: frozen dataclasses, each carrying its SourcePos."""

from __future__ import annotations

from dataclasses import dataclass

from ppc.errors import SourcePos
from ppc.ir.order import Kind

# ---------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True, kw_only=True)
class Num:
    """An integer literal (booleans are 1 and 0)."""

    value: int
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class Name:
    """A reference to a parameter, `let` binding, loop variable or R/M/V/S."""

    id: str
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class BinOp:
    """`left op right` with op one of + - * // % == != < <= > >= and or."""

    op: str
    left: Expr
    right: Expr
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class Unary:
    """`-operand` or `not operand`."""

    op: str
    operand: Expr
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """A built-in function call: min, max, abs, stage, rank."""

    func: str
    args: tuple[Expr, ...]
    pos: SourcePos


Expr = Num | Name | BinOp | Unary | Call

# ---------------------------------------------------------------- statements


@dataclass(frozen=True, slots=True, kw_only=True)
class Let:
    """`let name = value`: binds a name for the rest of the enclosing block."""

    name: str
    value: Expr
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class For:
    """`for var in start .. stop { body }`, or downward with `reversed(start .. stop)`."""

    var: str
    start: Expr
    stop: Expr
    reverse: bool
    body: tuple[Stmt, ...]
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class If:
    """`if cond { then } else { orelse }` (`elif` nests another If in orelse)."""

    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """A compute op `F(stage, mb)`; mb None means the next microbatch of this kind.

    An overlapped op `FB(s_f, m_f, s_b, m_b)` (or `FB(s_f, s_b)`) holds its parts, each an
    Op of its own kind; its `stage` and `mb` are the first part's."""

    kind: Kind
    stage: Expr
    mb: Expr | None
    pos: SourcePos
    parts: tuple[Op, ...] = ()


Stmt = Let | For | If | Op

# ---------------------------------------------------------------- declarations


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    """`param name = default`: a user parameter, overridable with --param name=value."""

    name: str
    default: Expr
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class Require:
    """`require cond : "message"`: checked before expansion."""

    cond: Expr
    message: str
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """`placement loop`, `placement vshape` or `placement [rank of stage 0, ...]`."""

    kind: str
    """"loop", "vshape" or "map"."""
    ranks: tuple[Expr, ...] = ()
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class PerRank:
    """`per rank r { ... }`: an explicit program, run once for every rank r."""

    var: str
    body: tuple[Stmt, ...]
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """`policy { ... }`: orders derived by deterministic list scheduling (see policy.py)."""

    split_backward: bool
    prefer: tuple[Kind, ...]
    inflight: Expr | None
    retained: Expr | None
    pos: SourcePos
    when_full: tuple[WhenFull, ...] = ()
    """`when LIMIT full prefer K, ...` items, in file order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WhenFull:
    """`when retained full prefer W`: while the rank's count is at that limit, these kinds go first."""

    limit: str
    """"inflight" or "retained"."""
    prefer: tuple[Kind, ...]
    pos: SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleDef:
    """A whole .ppc file."""

    name: str
    doc: str
    params: tuple[Param, ...]
    requires: tuple[Require, ...]
    placement: Placement
    body: PerRank | Policy
    pos: SourcePos
    virtual: int | None = None
    """`virtual N`: the V used when none is given (None: 1)."""

"""Expansion: a ScheduleDef and (R, M, V, params) -> a checked ComputeOrder.

Requires a parsed ScheduleDef. Guarantees a ComputeOrder whose every op appears once,
on the rank that holds its stage, with F before I/B and I before W of the same
(stage, microbatch) (see check.py), and `origins` pointing at the producing .ppc line.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping

from ppc.errors import ConstraintError, ScheduleError, SourcePos
from ppc.ir.order import Action, ComputeOrder
from ppc.lang import ast, placement, policy
from ppc.lang.evaluate import BASE_FUNCTIONS, Scope, evaluate
from ppc.lang.limits import MAX_VALUE, STATEMENTS_PER_OP, check_order_size
from ppc.verify.order import check_order

log = logging.getLogger(__name__)

PLACEMENT_OVERRIDES = {"loop": "loop", "v": "vshape", "vshape": "vshape"}


def expand(
    schedule: ast.ScheduleDef,
    *,
    ranks: int,
    microbatches: int,
    virtual: int | None = None,
    placement_kind: str | None = None,
    params: Mapping[str, int] | None = None,
) -> ComputeOrder:
    """Expand `schedule` for R ranks, M microbatches and V stages per rank.

    V None means the schedule's `virtual N` declaration, or 1 when it has none.
    """
    if virtual is None:
        virtual = default_virtual(schedule)
    _check_sizes(ranks, microbatches, virtual)
    is_policy = isinstance(schedule.body, ast.Policy)
    per_pair = 3 if is_policy and schedule.body.split_backward else 2
    check_order_size(ranks, microbatches, virtual, per_pair=per_pair)
    scope = bind_params(schedule, ranks, microbatches, virtual, params or {})
    check_requires(schedule, scope)
    layout = placement.Layout.of(_placement(schedule, scope, placement_kind), ranks)
    scope = Scope(names=scope.names, functions=_functions(layout))
    if isinstance(schedule.body, ast.Policy):
        rows = policy.list_schedule(schedule.body, layout=layout, microbatches=microbatches, scope=scope)
    else:
        budget = _Budget(STATEMENTS_PER_OP * 3 * len(layout.placement) * microbatches + 10_000)
        rows = [_run_rank(schedule.body, rank, scope, microbatches, budget) for rank in range(ranks)]
    order = ComputeOrder(
        schedule=schedule.name,
        ranks=ranks,
        stages=len(layout.placement),
        microbatches=microbatches,
        placement=layout.placement,
        compute=tuple(tuple(a for a, _ in row) for row in rows),
        origins=tuple(tuple(p for _, p in row) for row in rows),
    )
    check_order(order, missing_pos=schedule.body.pos)
    log.info("expanded %s: R=%s M=%s V=%s", schedule.name, ranks, microbatches, virtual)
    return order


def default_virtual(schedule: ast.ScheduleDef) -> int:
    """The V a schedule runs with when none is given: its `virtual N`, else 1."""
    return 1 if schedule.virtual is None else schedule.virtual


def _check_sizes(ranks: int, microbatches: int, virtual: int) -> None:
    for label, value in (("ranks", ranks), ("microbatches", microbatches), ("virtual", virtual)):
        if value < 1:
            raise ScheduleError(f"{label} must be at least 1, got {value}")


def bind_params(
    schedule: ast.ScheduleDef, ranks: int, microbatches: int, virtual: int, params: Mapping[str, int]
) -> Scope:
    """R, M, V, S and the user parameters (defaults evaluated in order, then overrides)."""
    declared = {p.name for p in schedule.params}
    unknown = sorted(set(params) - declared)
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise ScheduleError(
            f"schedule {schedule.name} has no parameter {unknown[0]!r} (its parameters: {known})"
        )
    names = {"R": ranks, "M": microbatches, "V": virtual, "S": ranks * virtual}
    scope = Scope(names=names, functions=BASE_FUNCTIONS)
    for param in schedule.params:
        value = params[param.name] if param.name in params else evaluate(param.default, scope)
        scope = scope.with_name(param.name, value)
    return scope


def check_requires(schedule: ast.ScheduleDef, scope: Scope) -> None:
    """Raise ConstraintError with the require's message for the first that fails."""
    for require in schedule.requires:
        if not evaluate(require.cond, scope):
            sizes = ", ".join(f"{k}={scope.names[k]}" for k in ("R", "M", "V"))
            raise ConstraintError(f"{require.message} ({sizes})", pos=require.pos)


def _placement(schedule: ast.ScheduleDef, scope: Scope, override: str | None) -> tuple[int, ...]:
    ranks, virtual = scope.names["R"], scope.names["V"]
    kind = schedule.placement.kind
    if override is not None:
        if override not in PLACEMENT_OVERRIDES:
            raise ScheduleError(f"unknown placement {override!r}: expected loop or v")
        kind = PLACEMENT_OVERRIDES[override]
    if kind == "loop":
        return placement.loop(ranks, virtual)
    if kind == "vshape":
        return placement.vshape(ranks, virtual)
    values = [evaluate(e, scope) for e in schedule.placement.ranks]
    return placement.explicit(values, ranks=ranks, virtual=virtual, pos=schedule.placement.pos)


def _functions(layout: placement.Layout) -> dict:
    return {**BASE_FUNCTIONS, "stage": layout.stage, "rank": layout.rank}


class _Budget:
    """Statements all ranks may still run: a loop bound gone wrong ends in an error, not a hang."""

    def __init__(self, statements: int):
        self.total = self.left = statements

    def spend(self, stmt: ast.Stmt) -> None:
        self.left -= 1
        if self.left < 0:
            raise ScheduleError(
                f"expansion ran {self.total:,} statements without finishing ({STATEMENTS_PER_OP} "
                "per op of the order): is a loop bound wrong?",
                pos=stmt.pos,
            )


class _RankProgram:
    """Runs one rank's statements, collecting (Action, SourcePos) in program order."""

    def __init__(self, microbatches: int, stages: int, budget: _Budget):
        self.ops: list[tuple[Action, SourcePos]] = []
        self.counts: dict[tuple[str, int], int] = defaultdict(int)
        self.limit = 4 * stages * microbatches + 16
        self.budget = budget

    def run(self, body: tuple[ast.Stmt, ...], scope: Scope) -> None:
        for stmt in body:
            self.budget.spend(stmt)
            if isinstance(stmt, ast.Let):
                scope = scope.with_name(stmt.name, evaluate(stmt.value, scope))
            elif isinstance(stmt, ast.For):
                self._for(stmt, scope)
            elif isinstance(stmt, ast.If):
                self.run(stmt.then if evaluate(stmt.cond, scope) else stmt.orelse, scope)
            else:
                self._op(stmt, scope)

    def _action(self, stmt: ast.Op, scope: Scope) -> Action:
        """The op's action; without a microbatch, the next one of its kind on its stage."""
        stage = evaluate(stmt.stage, scope)
        key = (stmt.kind.name, stage)
        mb = self.counts[key] if stmt.mb is None else evaluate(stmt.mb, scope)
        if not (-MAX_VALUE <= stage <= MAX_VALUE and -MAX_VALUE <= mb <= MAX_VALUE):
            raise ScheduleError(f"{stmt.kind.name}: stage or microbatch above 2**63", pos=stmt.pos)
        self.counts[key] += 1
        return Action(stage=stage, kind=stmt.kind, mb=mb)

    def _for(self, stmt: ast.For, scope: Scope) -> None:
        start, stop = evaluate(stmt.start, scope), evaluate(stmt.stop, scope)
        values = range(stop - 1, start - 1, -1) if stmt.reverse else range(start, stop)
        for value in values:
            self.budget.spend(stmt)
            self.run(stmt.body, scope.with_name(stmt.var, value))

    def _op(self, stmt: ast.Op, scope: Scope) -> None:
        if stmt.parts:
            parts = tuple(self._action(part, scope) for part in stmt.parts)
            action = Action.overlapped(stmt.kind, parts)
        else:
            action = self._action(stmt, scope)
        self.ops.append((action, stmt.pos))
        if len(self.ops) > self.limit:
            raise ScheduleError(f"this rank's program produces more than {self.limit} ops", pos=stmt.pos)


def _run_rank(body: ast.PerRank, rank: int, scope: Scope, microbatches: int, budget: _Budget):
    # a rank holds V stages, so 4 x V x M bounds its ops (all ranks: linear in the order)
    program = _RankProgram(microbatches, scope.names["V"], budget)
    program.run(body.body, scope.with_name(body.var, rank))
    return program.ops

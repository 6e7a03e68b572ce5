"""The CP-SAT model of one training step (OR-Tools, imported only here and only when used).

Variables: one fixed-size interval per op (integer ticks, see problem.py), the makespan.
Constraints: no overlap on each rank; every dependency (with its transfer delay); the
symmetry order on stage 0; memory as a cumulative per rank over each (stage, microbatch)'s
holding intervals (`_holds`); makespan >= every op's end. Objective: the makespan.

Adding recompute later: give each (stage, mb) a boolean `recompute`; add an optional
interval R(s, mb) of the stage's F duration on its rank, present iff `recompute`, with
F.end <= R.start and R.end <= I/B.start; in `_holds`, make the [F.start, W.end) hold
optional (present iff not recompute) and add the holds [F.start, F.end) and
[R.start, W.end) present iff recompute. No-overlap and cumulative accept optional
intervals, so nothing else changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ppc.costs import CostModel
from ppc.errors import PpcError
from ppc.search.budget import MemoryBudget
from ppc.search.problem import Problem

__all__ = ["Solution", "solve"]

BYTES_STEPS = 100_000
"""In bytes, one memory unit is the greatest common divisor of the bytes that I and W
free (exact), or else the largest set's bytes / BYTES_STEPS (sizes rounded up)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Solution:
    status: str
    """CP-SAT's status name: OPTIMAL, FEASIBLE, INFEASIBLE, UNKNOWN or MODEL_INVALID."""
    start: tuple[int, ...] | None
    """Start tick of every op (None when no solution was found)."""
    objective: int | None
    bound: int
    """Proven lower bound on the makespan, in ticks."""
    wall_time: float


def _import_cp_model():
    try:
        from ortools.sat.python import cp_model
    except ImportError:
        raise PpcError(
            "ppc search needs OR-Tools: pip install 'ppc-pipeline[search]' (or pip install ortools)"
        ) from None
    return cp_model


def solve(
    problem: Problem, *, duration: Sequence[int], delay: Sequence[int], horizon: int, lower: int,
    budget: MemoryBudget | None, costs: CostModel, hint: Sequence[int] | None, time_limit: float,
    workers: int, earliest: Sequence[int], tail: Sequence[int],
    progress: Callable[[float, int, int], None] | None = None,
) -> Solution:
    """Minimise the makespan (ticks) within `horizon`; `lower` is a known lower bound."""
    cp_model = _import_cp_model()
    model = cp_model.CpModel()
    n = len(problem.ops)
    start, interval = [], []
    for i, op in enumerate(problem.ops):
        hi = max(earliest[i], horizon - tail[i])
        s = model.new_int_var(earliest[i], hi, f"s{op}")
        start.append(s)
        interval.append(model.new_fixed_size_interval_var(s, duration[i], f"i{op}"))
    for d, t in zip(problem.deps + problem.symmetry, delay):
        model.add(start[d.after] >= start[d.before] + duration[d.before] + t)
    for r in range(problem.ranks):
        model.add_no_overlap([interval[i] for i in problem.on_rank(r)])
    if budget is not None:
        _memory(model, problem, start, duration, budget, costs, horizon)
    makespan = model.new_int_var(min(lower, horizon), horizon, "makespan")
    has_successor = {d.before for d in problem.deps}
    for i in range(n):
        if i not in has_successor:
            model.add(makespan >= start[i] + duration[i])
    model.minimize(makespan)
    if hint is not None:
        for s, h in zip(start, hint):
            model.add_hint(s, h)
        model.add_hint(makespan, max(h + d for h, d in zip(hint, duration)))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, time_limit)
    solver.parameters.num_workers = workers
    began = time.perf_counter()
    callback = _reporter(cp_model, progress, began) if progress else None
    status = solver.solve(model, callback)
    name = solver.status_name(status)
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    bound = solver.best_objective_bound if found else lower
    return Solution(
        status=name,
        start=tuple(solver.value(s) for s in start) if found else None,
        objective=int(solver.objective_value) if found else None,
        bound=max(lower, math.ceil(bound - 1e-6)) if found else lower,
        wall_time=time.perf_counter() - began,
    )


def _memory(model, problem: Problem, start, duration, budget: MemoryBudget, costs: CostModel, horizon: int) -> None:
    """One cumulative per rank over every (stage, mb)'s holds (see `_holds`)."""
    holds: list[list[tuple[object, int]]] = [[] for _ in range(problem.ranks)]
    at = problem.index()
    unit = _byte_unit(costs, problem.split_backward) if budget.kind == "bytes" else 1.0
    for op in problem.ops:
        if op.kind == "F":
            holds[op.rank].extend(_holds(model, problem, at, op.stage, op.mb, start, duration, budget, costs, unit,
                                         horizon))
    for r in range(problem.ranks):
        if holds[r]:
            capacity = math.floor(budget.of(r) / unit + 1e-9)
            model.add_cumulative([iv for iv, _ in holds[r]], [q for _, q in holds[r]], capacity)


def _byte_unit(costs: CostModel, split_backward: bool) -> float:
    parts = []
    for nbytes in costs.activation_bytes:
        kept = costs.weight_share * nbytes if split_backward else 0.0
        parts += [nbytes - kept, kept]
    whole = [round(p) for p in parts]
    if all(abs(p - q) < 1e-6 for p, q in zip(parts, whole)) and any(whole):
        return float(math.gcd(*whole))
    return max(1.0, max(parts) / BYTES_STEPS)


def _holds(model, problem: Problem, at, stage: int, mb: int, start, duration, budget: MemoryBudget,
           costs: CostModel, unit: float, horizon: int) -> list[tuple[object, int]]:
    """(interval, demand) pairs a (stage, mb) holds on its rank: in sets, 1 from F's start to
    W's (or B's) end; in bytes, the part I frees until I's end and the rest until W's end."""
    f = at[(stage, "F", mb)]
    last = at[(stage, problem.last_kind, mb)]

    def held(until: int, name: str):
        size = model.new_int_var(0, horizon, f"{name}{stage}_{mb}")
        return model.new_interval_var(start[f], size, start[until] + duration[until], f"{name}{stage}_{mb}")

    if budget.kind == "sets":
        return [(held(last, "h"), 1)]
    nbytes = costs.activation_bytes[stage]
    if not problem.split_backward:
        return [(held(last, "h"), math.ceil(nbytes / unit))]
    kept = costs.weight_share * nbytes
    i = at[(stage, "I", mb)]
    return [(held(i, "hi"), math.ceil((nbytes - kept) / unit - 1e-9)), (held(last, "hw"), math.ceil(kept / unit - 1e-9))]


def _reporter(cp_model, progress, began: float):
    """A solution callback that calls `progress(elapsed, best, bound)` on every better solution."""

    class Reporter(cp_model.CpSolverSolutionCallback):
        def on_solution_callback(self) -> None:
            progress(time.perf_counter() - began, int(self.objective_value), int(self.best_objective_bound))

    return Reporter()

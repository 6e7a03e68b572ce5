"""The CP-SAT model of one training step (OR-Tools, imported only here and only when used).

Variables: one fixed-size interval per op (integer ticks, see problem.py), the makespan.
Constraints: no overlap on each rank; every dependency (with its transfer delay); the
symmetry order on stage 0; memory as a cumulative per rank over each (stage, microbatch)'s
holding intervals (`_holds`); makespan >= every op's end. Objective: the makespan.

Recompute (`recompute=True`): each (stage, mb) gets a boolean; when true, an optional
interval RF(s, mb) of the stage's F duration runs on its rank (in its no-overlap) with
F.end <= RF.start and RF.end <= I/B.start, and the pair's memory holds split into
[F.start, F.end) and [RF.start, W/B.end) (`_holds`); when false, the holds are the
usual ones. Optional intervals carry the choice; nothing else changes.
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
    recomputed: tuple[tuple[int, int, int], ...] = ()
    """(stage, mb, start tick) of every recompute the solution runs (with `recompute`)."""


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
    progress: Callable[[float, int, int], None] | None = None, recompute: bool = False,
) -> Solution:
    """Minimise the makespan (ticks) within `horizon`; `lower` is a known lower bound;
    with `recompute`, the solver also decides which (stage, mb) recompute their forward."""
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
    rf = _recomputes(model, problem, start, duration, horizon) if recompute else {}
    for r in range(problem.ranks):
        model.add_no_overlap([interval[i] for i in problem.on_rank(r)]
                             + [iv for (s, _), (_, _, iv) in rf.items() if problem.placement[s] == r])
    if budget is not None:
        _memory(model, problem, start, duration, budget, costs, horizon, rf)
    makespan = model.new_int_var(min(lower, horizon), horizon, "makespan")
    has_successor = {d.before for d in problem.deps}
    for i in range(n):
        if i not in has_successor:
            model.add(makespan >= start[i] + duration[i])
    model.minimize(makespan)
    if hint is not None:
        for s, h in zip(start, hint):
            model.add_hint(s, h)
        for present, _, _ in rf.values():  # the warm starts recompute nothing
            model.add_hint(present, 0)
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
        recomputed=tuple((s, mb, solver.value(at)) for (s, mb), (present, at, _) in sorted(rf.items())
                         if found and solver.boolean_value(present)),
    )


def _recomputes(model, problem: Problem, start, duration, horizon: int) -> dict:
    """{(stage, mb): (present, start, interval)}: the optional recompute of each pair, a
    forward's duration between its F and its first backward op."""
    at = problem.index()
    out = {}
    for op in problem.ops:
        if op.kind != "F":
            continue
        f, back = at[(op.stage, "F", op.mb)], at[(op.stage, problem.backward_kind, op.mb)]
        name = f"{op.stage}RF{op.mb}"
        present = model.new_bool_var(f"rc{name}")
        s = model.new_int_var(0, horizon, f"s{name}")
        interval = model.new_optional_fixed_size_interval_var(s, duration[f], present, f"i{name}")
        model.add(s >= start[f] + duration[f]).only_enforce_if(present)
        model.add(start[back] >= s + duration[f]).only_enforce_if(present)
        out[(op.stage, op.mb)] = (present, s, interval)
    return out


def _memory(model, problem: Problem, start, duration, budget: MemoryBudget, costs: CostModel, horizon: int,
            rf: dict) -> None:
    """One cumulative per rank over every (stage, mb)'s holds (see `_holds`)."""
    holds: list[list[tuple[object, int]]] = [[] for _ in range(problem.ranks)]
    at = problem.index()
    unit = _byte_unit(costs, problem.split_backward) if budget.kind == "bytes" else 1.0
    for op in problem.ops:
        if op.kind == "F":
            holds[op.rank].extend(_holds(model, problem, at, op.stage, op.mb, start, duration, budget, costs, unit,
                                         horizon, rf.get((op.stage, op.mb))))
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
           costs: CostModel, unit: float, horizon: int, rf=None) -> list[tuple[object, int]]:
    """(interval, demand) pairs a (stage, mb) holds on its rank: in sets, 1 from F's start to
    W's (or B's) end; in bytes, the part I frees until I's end and the rest until W's end.
    With a recompute `rf` = (present, start, interval): when present, the whole set during F
    only, then the same holds as above from the recompute's start instead of F's."""
    f = at[(stage, "F", mb)]
    last = at[(stage, problem.last_kind, mb)]
    present = rf[0] if rf is not None else None

    def held(until: int, name: str, begin=None, when=None):
        begin = start[f] if begin is None else begin
        size = model.new_int_var(0, horizon, f"{name}{stage}_{mb}")
        end = start[until] + duration[until]
        if when is None:
            return model.new_interval_var(begin, size, end, f"{name}{stage}_{mb}")
        return model.new_optional_interval_var(begin, size, end, when, f"{name}{stage}_{mb}")

    def holds(begin=None, when=None) -> list[tuple[object, int]]:
        if budget.kind == "sets":
            return [(held(last, "h", begin, when), 1)]
        nbytes = costs.activation_bytes[stage]
        if not problem.split_backward:
            return [(held(last, "h", begin, when), math.ceil(nbytes / unit))]
        kept = costs.weight_share * nbytes
        i = at[(stage, "I", mb)]
        return [(held(i, "hi", begin, when), math.ceil((nbytes - kept) / unit - 1e-9)),
                (held(last, "hw", begin, when), math.ceil(kept / unit - 1e-9))]

    if present is None:
        return holds()
    whole = 1 if budget.kind == "sets" else math.ceil(costs.activation_bytes[stage] / unit - 1e-9)
    during_f = model.new_optional_fixed_size_interval_var(start[f], duration[f], present, f"hf{stage}_{mb}")
    return holds(when=~present) + [(during_f, whole)] + holds(begin=rf[1], when=present)


def _reporter(cp_model, progress, began: float):
    """A solution callback that calls `progress(elapsed, best, bound)` on every better solution."""

    class Reporter(cp_model.CpSolverSolutionCallback):
        def on_solution_callback(self) -> None:
            progress(time.perf_counter() - began, int(self.objective_value), int(self.best_objective_bound))

    return Reporter()

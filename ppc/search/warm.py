"""The built-in schedules under a budget, and a compute order's integer start times.

The best built-in that fits the budget warm-starts the solver (its start times become
the solver's hint and its step the first upper bound), and is what a search returns if
the solver finds nothing better within its time limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ppc.costs import CostModel
from ppc.errors import PpcError
from ppc.ir.order import ComputeOrder
from ppc.ir.stage_graph import StageGraph
from ppc.predict import simulate_order
from ppc.search.budget import MemoryBudget
from ppc.search.problem import Problem

log = logging.getLogger(__name__)

__all__ = ["Candidate", "asap_ticks", "builtin_candidates", "simulate_order"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A built-in schedule, simulated."""

    name: str
    order: ComputeOrder
    makespan: float
    peaks: tuple[tuple[int, int | None], ...]
    """Per rank, (peak activation sets, peak bytes or None)."""
    fits: bool


def builtin_candidates(
    *, ranks: int, microbatches: int, virtual: int, placement: str, costs: CostModel,
    budget: MemoryBudget | None, graph: StageGraph | None = None,
) -> list[Candidate]:
    """Every built-in that expands for R, M, V and the placement, fastest first."""
    from ppc.lang import builtin_schedules, load_schedule

    out = []
    for name in builtin_schedules():
        try:
            order = load_schedule(name).expand(
                ranks=ranks, microbatches=microbatches, virtual=virtual, placement=placement
            )
            timeline = simulate_order(order, costs, graph)
        except PpcError as error:
            log.info("built-in %s does not run here: %s", name, error.message)
            continue
        peaks = tuple((s.peak_activations, s.peak_bytes) for s in timeline.per_rank)
        fits = budget is None or budget.fits(peaks)
        out.append(Candidate(name=name, order=order, makespan=timeline.makespan, peaks=peaks, fits=fits))
    return sorted(out, key=lambda c: (not c.fits, c.makespan, c.name))


def asap_ticks(
    problem: Problem, order: ComputeOrder, duration: Sequence[int], delay: Sequence[int]
) -> list[int] | None:
    """Start ticks of every op of `problem` when `order`'s ranks run their ops as early as
    their rank and inputs allow (a B counts as I then W with a split backward); None when
    the order's ops are not the problem's."""
    at = problem.index()
    rows: list[list[int]] = []
    for row in order.compute:
        ids = []
        for action in row:
            kind = action.kind.value
            parts = ("I", "W") if kind == "B" and problem.split_backward else (kind,)
            for part in parts:
                i = at.get((action.stage, part, action.mb))
                if i is None:
                    return None
                ids.append(i)
        rows.append(ids)
    if sorted(i for row in rows for i in row) != list(range(len(problem.ops))):
        return None
    waits: list[list[tuple[int, int]]] = [[] for _ in problem.ops]
    for d, t in zip(problem.deps, delay):
        waits[d.after].append((d.before, t))
    start = [0] * len(problem.ops)
    done = [False] * len(problem.ops)
    pos = [0] * len(rows)
    free = [0] * len(rows)
    moved = True
    while moved:
        moved = False
        for r, row in enumerate(rows):
            while pos[r] < len(row):
                i = row[pos[r]]
                if not all(done[b] for b, _ in waits[i]):
                    break
                start[i] = max([free[r]] + [start[b] + duration[b] + t for b, t in waits[i]])
                free[r] = start[i] + duration[i]
                done[i] = True
                pos[r] += 1
                moved = True
    return start if all(done) else None

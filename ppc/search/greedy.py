"""A greedy schedule under the budget: a second warm start, for budgets no built-in fits well.

A list scheduler in time order: whenever a rank is free it runs, among its ops whose
inputs have arrived, a backward (I or B) first, then a forward if the rank's memory
allows one more set, then a W (which frees memory and fills what would be a bubble);
lowest microbatch first within a kind. It is the zero-bubble heuristic with the budget
as its only knob, on integer times; it may get stuck at tight budgets (then None).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from ppc.costs import CostModel
from ppc.search.budget import MemoryBudget
from ppc.search.problem import Problem

__all__ = ["greedy_order"]

_PRIORITY = {"I": 0, "B": 0, "F": 1, "W": 2}


def greedy_order(
    problem: Problem, duration: Sequence[int], delay: Sequence[int], budget: MemoryBudget | None, costs: CostModel,
) -> list[list[int]] | None:
    """Per rank, op indices in the order the greedy runs them (None if it gets stuck)."""
    n = len(problem.ops)
    waits_left = [0] * n
    succ: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for d, t in zip(problem.deps + problem.symmetry, delay):
        succ[d.before].append((d.after, t))
        waits_left[d.after] += 1
    ready_at = [0] * n
    ready: list[list[tuple[int, int, int, int]]] = [[] for _ in range(problem.ranks)]
    for i in range(n):
        if waits_left[i] == 0:
            _push(ready, problem, i, 0)
    free = [0] * problem.ranks
    held = [0.0] * problem.ranks
    rows: list[list[int]] = [[] for _ in range(problem.ranks)]
    done = 0
    while done < n:
        pick = _next(problem, ready, free, held, budget, costs)
        if pick is None:
            return None
        r, i, start = pick
        ready[r].remove(next(e for e in ready[r] if e[3] == i))
        heapq.heapify(ready[r])
        rows[r].append(i)
        free[r] = start + duration[i]
        held[r] += _change(problem, i, costs, budget)
        done += 1
        for j, t in succ[i]:
            ready_at[j] = max(ready_at[j], free[r] + t)
            waits_left[j] -= 1
            if waits_left[j] == 0:
                _push(ready, problem, j, ready_at[j])
    return rows


def _push(ready, problem: Problem, i: int, at: int) -> None:
    op = problem.ops[i]
    heapq.heappush(ready[op.rank], (at, _PRIORITY[op.kind], op.mb, i))


def _next(problem: Problem, ready, free, held, budget, costs):
    """(rank, op, start) of the op that can start first (ties: priority, microbatch)."""
    best = None
    for r, entries in enumerate(ready):
        allowed = [e for e in entries if _fits(problem, e[3], held[r], budget, costs)]
        if not allowed:
            continue
        start = max(free[r], min(e[0] for e in allowed))
        now = [e for e in allowed if e[0] <= start]
        _, prio, mb, i = min(now, key=lambda e: (e[1], e[2]))
        key = (start, prio, mb, r)
        if best is None or key < best[0]:
            best = (key, r, i, start)
    return None if best is None else best[1:]


def _fits(problem: Problem, i: int, held: float, budget: MemoryBudget | None, costs: CostModel) -> bool:
    if budget is None or problem.ops[i].kind != "F":
        return True
    return held + _change(problem, i, costs, budget) <= budget.of(problem.ops[i].rank) + 1e-9


def _change(problem: Problem, i: int, costs: CostModel, budget: MemoryBudget | None) -> float:
    """Memory the op allocates (+) or frees (-), in the budget's unit."""
    if budget is None:
        return 0.0
    op = problem.ops[i]
    size = 1.0 if budget.kind == "sets" else float(costs.activation_bytes[op.stage])
    kept = 1.0 if budget.kind == "sets" else costs.weight_share
    if op.kind == "F":
        return size
    if op.kind == "B":
        return -size
    if op.kind == "I":
        return 0.0 if budget.kind == "sets" else -(1.0 - kept) * size
    return -kept * size

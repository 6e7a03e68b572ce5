"""Predict when each compute op of a compute order starts, to place communication.

Each op starts when its rank is free and its cross-rank inputs have arrived (producer
end + transfer time). The pass is a plain worklist over ranks, linear in the ops, and
reports a cycle of waits in schedule terms when the order cannot run at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx

from ppc.costs import CostModel
from ppc.errors import DeadlockError
from ppc.ir.routes import Route
from ppc.verify.order import ComputeIndex, last_backward_of

Deps = list[list[tuple[int, float]]]


@dataclass(slots=True, kw_only=True)
class Prediction:
    """Predicted timing of every compute op (indexed by global op id)."""

    start: list[float]
    end: list[float]
    level: list[int]
    """Longest chain of ops (program order or data) ending at the op: a tie-break that
    keeps the order topological when some costs are zero."""


def transfer_bytes(specs) -> int:
    return sum(s.bytes for s in specs)


def cross_rank_deps(index: ComputeIndex, routes: Sequence[Route], costs: CostModel) -> Deps:
    """deps[g] = [(producer op, transfer time)] for each input g receives from another rank."""
    deps: Deps = [[] for _ in index.ops]
    for route in routes:
        if route.local:
            continue
        fwd_time = costs.transfer(transfer_bytes(route.forward))
        producers = index.forward_column(route.producer)
        for c in route.consumers:
            for g, fp in zip(index.forward_column(c), producers):
                deps[g].append((fp, fwd_time))
        if route.grad_consumers:
            bwd_time = costs.transfer(transfer_bytes(route.backward))
            makers = last_backward_of(index, route.grad_consumers)
            for g, last in zip(index.backward_column(route.producer), makers):
                deps[g].append((last, bwd_time))
    return deps


def predict(index: ComputeIndex, ranks: int, deps: Deps, costs: CostModel) -> Prediction:
    """Time every op; raises DeadlockError with the cycle of waits if some never run."""
    n = len(index.ops)
    duration = {}
    for kind, stage, _ in index.ops:
        if (kind, stage) not in duration and not kind.parts:
            duration[(kind, stage)] = costs.duration(kind, stage)
    dur = [duration[(k, s)] if not k.parts else costs.overlapped_duration(k, index.parts[g])
           for g, (k, s, _) in enumerate(index.ops)]
    start = [0.0] * n
    end = [0.0] * n
    level = [0] * n
    done = bytearray(n)
    ptr = list(index.offset)
    limit = index.offset[1:] + [n]
    free = [0.0] * ranks
    depth = [0] * ranks
    waiters: dict[int, list[int]] = {}
    stack = list(range(ranks - 1, -1, -1))
    while stack:
        r = stack.pop()
        g, lim, t, lv = ptr[r], limit[r], free[r], depth[r]
        while g < lim:
            blocked = False
            for d, delay in deps[g]:
                if not done[d]:
                    waiters.setdefault(d, []).append(r)
                    blocked = True
                    break
                arrive = end[d] + delay
                t = max(t, arrive)
                if level[d] >= lv:
                    lv = level[d] + 1
            if blocked:
                break
            start[g] = t
            t += dur[g]
            end[g] = t
            lv += 1
            level[g] = lv
            done[g] = 1
            woken = waiters.pop(g, None)
            if woken:
                stack.extend(woken)
            g += 1
        ptr[r], free[r], depth[r] = g, t, lv
    if any(ptr[r] < limit[r] for r in range(ranks)):
        raise DeadlockError(_describe_deadlock(index, ranks, deps, done, ptr, limit))
    return Prediction(start=start, end=end, level=level)


def _describe_deadlock(index, ranks, deps, done, ptr, limit) -> str:
    waits = nx.DiGraph()
    reason = {}
    for r in range(ranks):
        g = ptr[r]
        if g >= limit[r]:
            continue
        d = next(d for d, _ in deps[g] if not done[d])
        waits.add_edge(r, index.rank_of[d])
        reason[r] = f"rank {r} waits at {index.name(g)} for {index.name(d)}"
    first = min(reason)
    cycle = nx.find_cycle(waits, source=first)
    ranks_in_cycle = [u for u, _ in cycle]
    start = ranks_in_cycle.index(min(ranks_in_cycle))
    ordered = ranks_in_cycle[start:] + ranks_in_cycle[:start]
    return "deadlock: " + "; ".join(reason[r] for r in ordered)

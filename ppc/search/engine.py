"""`search`: the fastest per-rank compute orders under a memory budget.

The steps: build the problem (problem.py); simulate the built-ins and take the fastest
that fits as warm start (warm.py); solve the CP-SAT model until optimal or the time limit
(cpsat.py); read each rank's order off the solved start times; simulate it with ppc's
simulator. The step reported is that simulation's, so `ppc simulate` on the written CSV
prints the same. If the solver's order simulates slower than the warm start (it cannot by
much: only through rounding), the warm start is returned instead.

The lower bound is the larger of the solver's proven bound (in ticks, rounded down, so a
bound on the real step too) and a bound computed from the real costs (problem.rank_bound):
for each rank, the earliest it can start plus all its work plus what must follow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ppc.costs import CostModel
from ppc.errors import CostError, PpcError
from ppc.ir.order import Action, ComputeOrder, Kind
from ppc.ir.stage_graph import StageGraph
from ppc.search import cpsat
from ppc.search.budget import MemoryBudget
from ppc.search.greedy import greedy_order
from ppc.search.problem import Dep, Problem, Resolution, build_problem, longest_paths, rank_bound
from ppc.search.warm import Candidate, asap_ticks, builtin_candidates, simulate_order

if TYPE_CHECKING:
    from ppc.sim.timeline import Timeline

log = logging.getLogger(__name__)

__all__ = ["Progress", "SearchRequest", "SearchResult", "search"]

Progress = Callable[[float, float, float], None]
"""progress(seconds since the solver started, best step found, proven lower bound), in cost
units; called when the solver starts (with the warm start) and on every better solution.
The best step is the solver's, in rounded-down ticks, so it may sit a little below the
simulated step."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchRequest:
    ranks: int
    microbatches: int
    costs: CostModel
    """Per-stage costs for R * V stages."""
    virtual: int = 1
    placement: str = "loop"
    """`loop` (stage s on rank s % R) or `v` (V-shape)."""
    memory: MemoryBudget | None = None
    """Per-rank budget (None: unbounded)."""
    time_limit: float = 30.0
    """Seconds the solver may run."""
    workers: int | None = None
    """Solver threads (None: the machine's cores, at most 8)."""
    split_backward: bool = True
    """Run each backward as I then W (else as one B)."""
    starts: tuple[tuple[str, ComputeOrder], ...] = ()
    """More warm starts to try, (name, order), such as `ppc plan`'s best candidate."""
    recompute: bool = False
    """Let the solver recompute forwards: per (stage, mb), run RF before its backward and
    hold no activations between the end of F and the start of RF."""
    graph: StageGraph | None = None
    """A chain of stages whose values carry bytes (`ppc plan`'s StageCosts.stage_graph()):
    messages then cost their bytes, in the model and in the simulation. None: messages
    cost the latency alone, as `ppc simulate` times a CSV without `--model`."""

    def __post_init__(self) -> None:
        if self.ranks < 1 or self.microbatches < 1 or self.virtual < 1:
            raise CostError(f"search needs ranks, microbatches and virtual >= 1, got {self.ranks}, "
                            f"{self.microbatches}, {self.virtual}")
        if self.placement not in ("loop", "v"):
            raise CostError(f"placement must be loop or v, got {self.placement!r}")
        if self.costs.stages != self.ranks * self.virtual:
            raise CostError(f"the costs give {self.costs.stages} stages, R * V = {self.ranks * self.virtual}")
        if not self.time_limit > 0:
            raise CostError(f"--time-limit must be > 0 seconds, got {self.time_limit!r}")

    @property
    def placement_map(self) -> tuple[int, ...]:
        from ppc.lang.placement import loop, vshape

        return (loop if self.placement == "loop" else vshape)(self.ranks, self.virtual)


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchResult:
    order: ComputeOrder
    timeline: Timeline
    """The simulator's timeline of `order`."""
    makespan: float
    lower_bound: float
    status: str
    """The solver's status (OPTIMAL, FEASIBLE, UNKNOWN, ...)."""
    source: str
    """`search` (the solver's order) or the name of the built-in returned instead."""
    wall_time: float
    """Seconds the solver ran."""
    resolution: Resolution
    builtins: tuple[Candidate, ...]
    """The built-ins simulated for the warm start, fastest fitting first."""

    @property
    def gap(self) -> float:
        """(makespan - lower bound) / lower bound."""
        if self.lower_bound <= 0:
            return 0.0 if self.makespan <= 0 else float("inf")
        return max(0.0, self.makespan - self.lower_bound) / self.lower_bound

    @property
    def optimal(self) -> bool:
        return self.gap <= 1e-9

    @property
    def peaks(self) -> tuple[tuple[int, int | None], ...]:
        return tuple((s.peak_activations, s.peak_bytes) for s in self.timeline.per_rank)


def search(request: SearchRequest, *, progress: Progress | None = None) -> SearchResult:
    """Solve; raises PpcError for an impossible budget or when nothing fits in time."""
    placement = request.placement_map
    if request.memory is not None:
        request.memory.check(placement, request.costs)
    problem = build_problem(ranks=request.ranks, microbatches=request.microbatches, placement=placement,
                            costs=request.costs, split_backward=request.split_backward,
                            message_bytes=_message_bytes(request.graph))
    builtins = builtin_candidates(ranks=request.ranks, microbatches=request.microbatches,
                                  virtual=request.virtual, placement=request.placement,
                                  costs=request.costs, budget=request.memory, graph=request.graph)
    if not request.recompute:  # outside the search space: not a comparison, not a result
        builtins = [c for c in builtins if not _recomputes(c.order)]
    res = Resolution.for_values([*problem.duration, *(d.delay for d in problem.deps)])
    duration = [res.ticks(d) for d in problem.duration]
    all_deps = problem.deps + problem.symmetry
    delay = [res.ticks(d.delay) for d in all_deps]
    warm = _warm_start(problem, builtins, duration, delay, request)
    hint = warm[2] if warm else None
    earliest, tail = longest_paths(len(problem.ops), duration, _with(all_deps, delay))
    # with recompute, forwards before a rank's first backward hold no memory: no budget term
    held = request.memory.held(placement, request.costs) if request.memory is not None and not request.recompute \
        else None
    lower_ticks = int(rank_bound(problem, duration, delay, held))
    horizon = _horizon(duration, delay, hint, problem if request.recompute else None)
    offset = problem.end_offset
    real_bound = rank_bound(problem, problem.duration, [d.delay for d in all_deps], held) + offset

    def report(elapsed: float, best: int, bound: int) -> None:
        progress(elapsed, best / res.per_unit + offset, max(real_bound, bound / res.per_unit + offset))

    if progress and hint is not None:
        report(0.0, horizon, lower_ticks)

    solution = cpsat.solve(
        problem, duration=duration, delay=delay, horizon=horizon, lower=lower_ticks, budget=request.memory,
        costs=request.costs, hint=hint, time_limit=request.time_limit,
        workers=request.workers or min(8, os.cpu_count() or 1), earliest=[int(e) for e in earliest],
        tail=[int(t) for t in tail], progress=report if progress else None, recompute=request.recompute,
    )
    lower_bound = max(real_bound, solution.bound / res.per_unit + offset)
    log.info("solver %s in %.2f s: objective %s, bound %s ticks (%g ticks per unit)", solution.status,
             solution.wall_time, solution.objective, solution.bound, res.per_unit)
    best = _best(problem, solution, warm, request, _recomputing_builtin(builtins, problem))
    if best is None:
        raise PpcError(
            f"no schedule found within --time-limit {request.time_limit:g} s under --memory {request.memory}, "
            f"and neither a built-in nor the greedy schedule fits it (solver: {solution.status}); give more time or memory"
        )
    order, timeline, source = best
    return SearchResult(
        order=order, timeline=timeline, makespan=float(timeline.makespan),
        lower_bound=lower_bound,
        status=solution.status, source=source, wall_time=solution.wall_time, resolution=res,
        builtins=tuple(builtins),
    )


def _warm_start(problem: Problem, builtins, duration, delay, request: SearchRequest):
    """(name, order, start ticks) of the fastest of the best fitting built-in, the greedy and
    the request's own warm starts that fit."""
    starts = []
    fitting = next((c for c in builtins if c.fits), None)
    if fitting is not None:
        starts.append((fitting.name, _renamed(fitting.order)))
    for name, order in request.starts:
        timeline = simulate_order(order, request.costs, request.graph)
        if request.memory is None or request.memory.fits([(s.peak_activations, s.peak_bytes)
                                                          for s in timeline.per_rank]):
            starts.append((name, _renamed(order)))
    rows = greedy_order(problem, duration, delay, request.memory, request.costs)
    if rows is not None:
        starts.append(("greedy", to_order(problem, {i: k for row in rows for k, i in enumerate(row)})))
    best = None
    for name, order in starts:
        start = asap_ticks(problem, order, duration, delay[: len(problem.deps)])
        if start is None:
            continue
        span = max(s + d for s, d in zip(start, duration))
        log.info("warm start %s: %s ticks", name, span)
        if best is None or span < best[0]:
            best = (span, name, order, start)
    return best[1:] if best else None


def _renamed(order: ComputeOrder) -> ComputeOrder:
    return ComputeOrder(schedule="search", ranks=order.ranks, stages=order.stages,
                        microbatches=order.microbatches, placement=order.placement, compute=order.compute)


def _message_bytes(graph: StageGraph | None) -> list[int] | None:
    """Per stage s, the bytes s sends to s + 1 (values to other stages are left out of the
    model, which keeps its bound a bound)."""
    if graph is None:
        return None
    out = [0] * graph.num_stages
    for value in graph.values:
        if value.producer >= 0 and value.producer + 1 in value.consumers and value.spec is not None:
            out[value.producer] += value.spec.bytes
    return out


def _with(deps, delay):
    return [Dep(d.before, d.after, t) for d, t in zip(deps, delay)]


def _horizon(duration, delay, hint, recompute: Problem | None = None) -> int:
    if hint is not None:
        return max(h + d for h, d in zip(hint, duration))
    # one op at a time, every message waited for (and every forward run twice)
    again = sum(d for d, op in zip(duration, recompute.ops) if op.kind == "F") if recompute else 0
    return sum(duration) + sum(delay) + again


def _recomputes(order: ComputeOrder) -> bool:
    return any(a.kind.drops for row in order.compute for a in row)


def _recomputing_builtin(builtins, problem: Problem) -> Candidate | None:
    """The fastest fitting built-in that recomputes (so cannot warm-start the solver) and
    whose other ops are the problem's kinds (no I/W without a split backward)."""
    kinds = {"F", "I", "W", "B"} if problem.split_backward else {"F", "B"}
    for c in builtins:
        names = {a.kind.name for row in c.order.compute for a in row if not a.kind.drops}
        if c.fits and _recomputes(c.order) and names <= kinds:
            return c
    return None


def _best(problem: Problem, solution: cpsat.Solution, warm, request: SearchRequest, builtin: Candidate | None):
    """(order, timeline, source) of the fastest of the solver's order, the warm start and the
    best fitting built-in that recomputes (it cannot warm-start the solver)."""
    found = None
    if solution.start is not None:
        order = to_order(problem, solution.start, solution.recomputed)
        timeline = simulate_order(order, request.costs, request.graph)
        fits = request.memory is None or request.memory.fits(
            [(s.peak_activations, s.peak_bytes) for s in timeline.per_rank])
        if fits:
            found = (order, timeline, "search")
        else:  # cannot happen: the model's memory is the simulator's, rounded up
            log.warning("the solver's order exceeds the budget in simulation; ignoring it")
    if warm is not None:
        name, order, _ = warm
        timeline = simulate_order(order, request.costs, request.graph)
        if found is None or timeline.makespan < found[1].makespan - 1e-12:
            found = (order, timeline, name)
    if builtin is not None and (found is None or builtin.makespan < found[1].makespan - 1e-12):
        order = _renamed(builtin.order)
        found = (order, simulate_order(order, request.costs, request.graph), builtin.name)
    return found


def to_order(problem: Problem, start, recomputed=()) -> ComputeOrder:
    """Each rank's ops sorted by `start[i]` (ties: end, then dependency depth); the
    `recomputed` (stage, mb, start) as RF ops among them, each just before its backward."""
    stages = problem.stages
    depth = {"F": lambda s: s, "RF": lambda s: 2 * stages - s - 0.5, "I": lambda s: 2 * stages - s,
             "B": lambda s: 2 * stages - s, "W": lambda s: 2 * stages - s + 1}
    forward = {(op.stage, op.mb): problem.duration[i] for i, op in enumerate(problem.ops) if op.kind == "F"}
    timed = [(start[i], start[i] + problem.duration[i], op.kind, op.stage, op.mb, op.rank)
             for i, op in enumerate(problem.ops)]
    timed += [(t, t + forward[(s, mb)], "RF", s, mb, problem.placement[s]) for s, mb, t in recomputed]
    timed.sort(key=lambda o: (o[0], o[1], depth[o[2]](o[3]), o[4]))
    rows = []
    for r in range(problem.ranks):
        rows.append(tuple(Action(stage=s, kind=Kind(k), mb=mb) for _, _, k, s, mb, rank in timed if rank == r))
    return ComputeOrder(schedule="search", ranks=problem.ranks, stages=stages, microbatches=problem.microbatches,
                        placement=problem.placement, compute=tuple(rows))

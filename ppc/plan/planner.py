"""`ppc plan`: search schedules, virtual stages, microbatching and stage splits on
measured costs, and rank the candidates by predicted step time.

Every candidate is expanded by the language, compiled and simulated with the costs of
its own split at its own microbatch size (scaling model: ppc/plan/cost_profile.py),
so a prediction here is exactly what `ppc simulate` prints for the same plan. Peak
memory per rank is weights and optimizer state plus the activations the compute order
keeps alive (ppc/plan/memory.py). A candidate fits when every rank stays under the
memory cap. With `dp` pipeline replicas (PlanRequest.dp; `ppc plan --world`,
ppc/plan/world.py) the step is one pipeline's with its gradient reductions timed by the
costs' collective terms. torch is never imported.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ppc.errors import CostError, PpcError
from ppc.ir.order import ComputeOrder
from ppc.plan import zb_policy
from ppc.plan.cost_profile import CostProfile, StageCosts
from ppc.plan.memory import peak_activation_bytes, weight_bytes
from ppc.plan.split import balanced_split

log = logging.getLogger(__name__)

AUTO_ZB = "zb_auto"
"""Name of the generated zero-bubble schedule among the candidates."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One plan and its prediction."""

    schedule: str
    virtual: int
    microbatches: int
    microbatch_size: int
    split: tuple[int, ...]
    """Layers per stage (model order)."""
    split_kind: str
    """`balanced` (re-split on the costs) or `given` (the costs file's own split)."""
    step_time: float
    bubble: float
    """Mean over ranks of idle time inside the step, as a fraction of the step."""
    peak_bytes: tuple[int, ...]
    """Per rank, weights and optimizer state plus peak activations."""
    fits: bool
    source: str = ""
    """The .ppc text for a generated schedule ("" for a built-in)."""
    csv: str = ""
    """The compute-only CSV of a searched schedule (`ppc search`; "" otherwise)."""
    dp: int = 1
    """Pipeline replicas (data parallelism): world = dp x ranks."""
    exposed_reduce: float = 0.0
    """The largest time any rank's STEP waited for its gradient reductions."""

    @property
    def stages(self) -> int:
        return len(self.split)

    def describe(self) -> str:
        return (f"{self.schedule} V={self.virtual} M={self.microbatches}x{self.microbatch_size} "
                f"split={'/'.join(map(str, self.split))}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRequest:
    ranks: int
    global_batch: int
    memory_cap: float | None = None
    """Bytes per rank (None: unbounded)."""
    schedules: tuple[str, ...] = ()
    """Built-in names or .ppc paths to try (empty: every built-in)."""
    virtual: tuple[int, ...] = (1, 2)
    microbatch_sizes: tuple[int, ...] = ()
    """Sizes to try (empty: every divisor of the global batch)."""
    auto_zero_bubble: bool = True
    dp: int = 1
    """Pipeline replicas; `global_batch` is one replica's share of the batch."""

    def __post_init__(self) -> None:
        if self.ranks < 1 or self.global_batch < 1 or self.dp < 1:
            raise CostError(f"plan needs ranks >= 1, a global batch >= 1 and dp >= 1, got {self.ranks}, "
                            f"{self.global_batch}, {self.dp}")


def timeline_of(order: ComputeOrder, stage_costs: StageCosts, *, dp: int = 1):
    """The simulated step of `order` with these stage costs (compile, validate, simulate),
    its gradients reduced across `dp` replicas."""
    from ppc.predict import simulate_order

    return simulate_order(order, stage_costs.costs, stage_costs.stage_graph(), dp=dp)


def predict(order: ComputeOrder, stage_costs: StageCosts) -> float:
    """Simulated step time of `order` with these stage costs."""
    return float(timeline_of(order, stage_costs).makespan)


def evaluate(
    order: ComputeOrder, stage_costs: StageCosts, *, profile: CostProfile, memory_cap: float | None,
    schedule: str, split_kind: str, microbatch_size: int, source: str = "", dp: int = 1,
) -> Candidate:
    timeline = timeline_of(order, stage_costs, dp=dp)
    step, bubble, costs = float(timeline.makespan), timeline.bubble, stage_costs.costs
    weights = weight_bytes(order, stage_costs.params, profile.bytes_per_param)
    acts = peak_activation_bytes(order, costs)
    peaks = tuple(w + a for w, a in zip(weights, acts))
    return Candidate(
        schedule=schedule, virtual=order.virtual, microbatches=order.microbatches,
        microbatch_size=microbatch_size, split=stage_costs.split, split_kind=split_kind,
        step_time=step, bubble=bubble, peak_bytes=peaks,
        fits=memory_cap is None or max(peaks) <= memory_cap, source=source,
        dp=dp, exposed_reduce=timeline.exposed_reduce,
    )


def baseline(profile: CostProfile, *, schedule: str = "1f1b", microbatches: int,
             memory_cap: float | None = None) -> Candidate:
    """The costs file's own split, as given, under `schedule` with V = 1."""
    from ppc.lang import load_schedule

    order = load_schedule(schedule).expand(ranks=profile.stages, microbatches=microbatches, virtual=1)
    return evaluate(order, profile.as_logged(), profile=profile, memory_cap=memory_cap,
                    schedule=schedule, split_kind="given", microbatch_size=profile.microbatch_size)


def search(profile: CostProfile, request: PlanRequest) -> list[Candidate]:
    """All feasible candidates, best first: fitting ones by step time, then the rest."""
    from ppc.lang import builtin_schedules, load_schedule

    names = request.schedules or tuple(builtin_schedules())
    schedules = {name: load_schedule(name) for name in names}
    units = profile.layer_units()
    weights = [u.total for u in units]
    out: list[Candidate] = []
    for virtual in request.virtual:
        stages = request.ranks * virtual
        if stages > len(units):
            continue
        splits = [("balanced", balanced_split(weights, stages))]
        if profile.split and len(profile.split) == stages and profile.split != splits[0][1]:
            splits.append(("given", profile.split))
        for b in _sizes(request):
            m = request.global_batch // b
            for kind, split in splits:
                costs = profile.grouped(split, microbatch_size=b)
                for name, schedule in schedules.items():
                    def expand_it(s=schedule, m=m, v=virtual):
                        return s.expand(ranks=request.ranks, microbatches=m, virtual=v)

                    out.extend(_try(expand_it, costs, profile, request, name, kind, b))
                if request.auto_zero_bubble:
                    out.extend(_auto_zb(costs, profile, request, virtual, m, b, kind))
    if not out:
        raise CostError(f"no schedule expands for {request.ranks} ranks and global batch {request.global_batch}")
    return rank(out)


NEAR_TIE = 0.01
"""Candidates within this fraction of the fastest step time count as tied; less memory wins."""


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Fitting before not fitting, then by step time; near-ties go to the smaller peak memory."""
    ordered = sorted(candidates, key=lambda c: (not c.fits, c.step_time, max(c.peak_bytes)))
    if not ordered:
        return ordered
    best = ordered[0]
    tied = [c for c in ordered if c.fits == best.fits and c.step_time <= best.step_time * (1 + NEAR_TIE)]
    tied.sort(key=lambda c: (max(c.peak_bytes), c.step_time))
    return tied + [c for c in ordered if c not in tied]


def _sizes(request: PlanRequest) -> list[int]:
    sizes = request.microbatch_sizes or tuple(
        b for b in range(1, request.global_batch + 1) if request.global_batch % b == 0
    )
    bad = [b for b in sizes if request.global_batch % b]
    if bad:
        raise CostError(f"microbatch size {bad[0]} does not divide the global batch {request.global_batch}")
    return list(sizes)


def _try(expand, costs: StageCosts, profile: CostProfile, request: PlanRequest, name: str,
         split_kind: str, b: int, source: str = "") -> list[Candidate]:
    try:
        order = expand()
        candidate = evaluate(order, costs, profile=profile, memory_cap=request.memory_cap,
                             schedule=name, split_kind=split_kind, microbatch_size=b, source=source,
                             dp=request.dp)
    except PpcError as error:
        log.info("skipping %s (V=%s, b=%s): %s", name, costs.costs.stages // request.ranks, b, error.message)
        return []
    return [candidate]


def _auto_zb(costs: StageCosts, profile: CostProfile, request: PlanRequest, virtual: int,
             m: int, b: int, split_kind: str) -> list[Candidate]:
    """The best generated zero-bubble policy for this split and microbatching."""
    from ppc.lang.expand import expand
    from ppc.lang.parser import parse
    from ppc.lang.placement import loop, vshape

    placement = loop(request.ranks, virtual) if virtual == 1 else vshape(request.ranks, virtual)
    retained = None
    if request.memory_cap is not None:
        try:
            retained = zb_policy.memory_retained(
                cap_bytes=request.memory_cap,
                weight_bytes=_weights_by_rank(placement, costs.params, profile.bytes_per_param, request.ranks),
                activation_bytes=costs.costs.activation_bytes or (0,) * len(placement),
                placement=placement,
            )
        except CostError as error:
            log.info("no zero-bubble policy for V=%s b=%s: %s", virtual, b, error.message)
            return []
    best: list[Candidate] = []
    for knobs in zb_policy.variants(ranks=request.ranks, virtual=virtual, retained=retained):
        text = zb_policy.generate(knobs)
        found = _try(lambda t=text: expand(parse(t, f"{AUTO_ZB}.ppc"), ranks=request.ranks,
                                           microbatches=m, virtual=virtual),
                     costs, profile, request, AUTO_ZB, split_kind, b, source=text)
        best = rank(best + found)[:1]
    return best


SEARCHED = "search"
"""Name of the `ppc search` result among the candidates."""


def searched(profile: CostProfile, best: Candidate, request: PlanRequest, *, time_limit: float) -> Candidate | None:
    """`ppc search` on the configuration of `best` (its V, microbatching and split; loop
    placement for V = 1, V-shape above), within the memory cap less the heaviest rank's
    weights; None when the search cannot run or finds nothing."""
    from ppc.lang.csv_format import write_csv
    from ppc.lang.placement import loop, vshape
    from ppc.search import MemoryBudget, SearchRequest, search

    costs = profile.grouped(best.split, microbatch_size=best.microbatch_size)
    placement = "loop" if best.virtual == 1 else "v"
    layout = (loop if placement == "loop" else vshape)(request.ranks, best.virtual)
    budget = None
    if request.memory_cap is not None:
        weights = _weights_by_rank(layout, costs.params, profile.bytes_per_param, request.ranks)
        free = tuple(max(0.0, request.memory_cap - w) for w in weights)
        budget = MemoryBudget(limit=min(free), kind="bytes", per_rank=free)
    try:
        result = search(SearchRequest(
            ranks=request.ranks, microbatches=best.microbatches, virtual=best.virtual, placement=placement,
            costs=costs.costs, memory=budget, time_limit=time_limit, graph=costs.stage_graph(),
            starts=_order_of(best, request),
        ))
    except PpcError as error:
        log.info("no searched schedule for %s: %s", best.describe(), error.message)
        return None
    found = evaluate(result.order, costs, profile=profile, memory_cap=request.memory_cap, schedule=SEARCHED,
                     split_kind=best.split_kind, microbatch_size=best.microbatch_size, dp=request.dp)
    return dataclasses.replace(found, csv=write_csv(result.order))


def _order_of(candidate: Candidate, request: PlanRequest) -> tuple[tuple[str, ComputeOrder], ...]:
    """The candidate's compute order, as a warm start for the search (empty if it won't expand)."""
    from ppc.lang import load_schedule
    from ppc.lang.expand import expand
    from ppc.lang.parser import parse

    try:
        if candidate.source:
            order = expand(parse(candidate.source, f"{candidate.schedule}.ppc"), ranks=request.ranks,
                           microbatches=candidate.microbatches, virtual=candidate.virtual)
        else:
            order = load_schedule(candidate.schedule).expand(ranks=request.ranks, microbatches=candidate.microbatches,
                                                             virtual=candidate.virtual)
    except PpcError:
        return ()
    return ((candidate.schedule, order),)


def _weights_by_rank(placement: Sequence[int], params: Sequence[int], per_param: float, ranks: int) -> tuple[int, ...]:
    out = [0.0] * ranks
    for stage, rank in enumerate(placement):
        out[rank] += params[stage] * per_param if params else 0
    return tuple(int(w) for w in out)


def calibrate_scale(profile_for: Callable[[float], CostProfile], measured: float, *, microbatches: int,
                    schedule: str = "1f1b", rounds: int = 4) -> float:
    """The factor on all compute times that makes `schedule` on the profile's own split
    predict the `measured` step time (fixed-point iteration; transfers are not scaled)."""
    scale = 1.0
    for _ in range(rounds):
        predicted = baseline(profile_for(scale), schedule=schedule, microbatches=microbatches).step_time
        scale *= measured / predicted
    return scale

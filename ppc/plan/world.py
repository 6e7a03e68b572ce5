"""`ppc plan --world N`: rank the PP x DP factorizations of N ranks.

Each factorization N = R x D runs D replicas of an R-rank pipeline. The global batch
divides over the replicas (each trains B / D samples per step), so for each R the
planner (ppc.plan.planner.search) picks the schedule, V, microbatching and split of one
replica under the memory cap, and its step is the simulated step of that one pipeline
with each stage's gradients all-reduced across the D replicas by the costs' collective
terms (ring: latency and bandwidth per hop). One pipeline is simulated whatever D is:
the other replicas are cost terms, so 16 x 64 = 1,024 ranks cost what 16 do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from ppc.errors import CostError, PpcError
from ppc.plan.cost_profile import CostProfile
from ppc.plan.planner import Candidate, PlanRequest, rank, search

__all__ = ["Factorization", "WorldPlan", "factorizations", "plan_world"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Factorization:
    """One PP x DP shape of the world and the best plan for it (None: nothing expands)."""

    ranks: int
    """Pipeline ranks R (PP)."""
    dp: int
    """Pipeline replicas D (DP)."""
    best: Candidate | None
    reason: str = ""
    """Why there is no plan (empty when there is one)."""

    @property
    def label(self) -> str:
        return f"{self.ranks} x {self.dp}"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorldPlan:
    world: int
    global_batch: int
    shapes: tuple[Factorization, ...]
    """Best first: fitting plans by step time, then the rest, then shapes without a plan."""

    @property
    def winner(self) -> Factorization:
        if self.shapes[0].best is None:
            raise CostError(f"no PP x DP factorization of {self.world} ranks has a plan: "
                            + "; ".join(f"{f.label}: {f.reason}" for f in self.shapes))
        return self.shapes[0]


def factorizations(world: int, *, max_ranks: int | None = None) -> list[tuple[int, int]]:
    """(R, D) with R x D = world, R ascending, R at most `max_ranks`."""
    if world < 1:
        raise CostError(f"--world needs at least 1 rank, got {world}")
    return [(r, world // r) for r in range(1, world + 1)
            if world % r == 0 and (max_ranks is None or r <= max_ranks)]


def plan_world(profile: CostProfile, *, world: int, global_batch: int, request: PlanRequest | None = None,
               pipeline_ranks: tuple[int, ...] = ()) -> WorldPlan:
    """The best plan of every PP x DP factorization of `world` (or only those whose R is in
    `pipeline_ranks`); `request` gives the other knobs (schedules, V, sizes, memory cap)."""
    units = len(profile.layer_units())
    base = request or PlanRequest(ranks=1, global_batch=global_batch)
    shapes = []
    for ranks, dp in factorizations(world, max_ranks=units):
        if pipeline_ranks and ranks not in pipeline_ranks:
            continue
        if global_batch % dp:
            shapes.append(Factorization(ranks=ranks, dp=dp, best=None,
                                        reason=f"the global batch {global_batch} does not divide over {dp} replicas"))
            continue
        try:
            found = search(profile, replace(base, ranks=ranks, global_batch=global_batch // dp, dp=dp))
        except PpcError as error:
            log.info("no plan for PP %d x DP %d: %s", ranks, dp, error.message)
            shapes.append(Factorization(ranks=ranks, dp=dp, best=None, reason=error.message))
            continue
        shapes.append(Factorization(ranks=ranks, dp=dp, best=found[0]))
    if not shapes:
        raise CostError(f"no PP x DP factorization of {world} ranks with at most {units} pipeline ranks "
                        "(one layer per stage at least)")
    planned = rank(f.best for f in shapes if f.best is not None)
    by_candidate = {id(f.best): f for f in shapes if f.best is not None}
    ordered = [by_candidate[id(c)] for c in planned] + [f for f in shapes if f.best is None]
    return WorldPlan(world=world, global_batch=global_batch, shapes=tuple(ordered))

"""Policy schedules: deterministic list scheduling turns a `policy { }` into compute orders.

The model: unit costs F = I = W = 1 and B = 2, no communication time. Time advances
from event to event; at each time every free rank (ascending) starts its most preferred
ready op, or waits for the next completion. Ops of one kind run in microbatch order on
each stage. Readiness:

- F(s, m): F(s-1, m) finished (s > 0); and the rank's limits allow one more microbatch;
- I/B(s, m): F(s, m) and I/B(s+1, m) finished (s < S-1);
- W(s, m): I(s, m) finished.

Limits, evaluated per rank with `r` bound to the rank: `inflight` counts the rank's
(stage, microbatch) pairs whose F ran and whose I/B has not; `retained` those whose F
ran and whose W (or B) has not. An F starts only while both are below their limits.
Ties: preference of the kind (the `prefer` line; unlisted kinds last), then lowest
microbatch, then lowest stage. While a rank's count is at a limit named by a
`when LIMIT full prefer K, ...` item (the first such item in file order), the kinds
that item lists come first instead, then the others in `prefer` order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppc.errors import ScheduleError, SourcePos
from ppc.ir.order import Action, Kind
from ppc.lang import ast
from ppc.lang.evaluate import Scope, evaluate
from ppc.lang.placement import Layout

COSTS = {Kind.F: 1, Kind.I: 1, Kind.W: 1, Kind.B: 2}
LIMITS = ("inflight", "retained")
"""The per-rank limits, in the order _State.limits holds them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timed:
    """One op of a policy schedule with its list-scheduling start and end times."""

    action: Action
    start: int
    end: int


def list_schedule(
    policy: ast.Policy, *, layout: Layout, microbatches: int, scope: Scope
) -> list[list[tuple[Action, SourcePos]]]:
    """Per rank, the ordered (action, origin) pairs that the policy produces."""
    timed = run_policy(policy, layout=layout, microbatches=microbatches, scope=scope)
    return [[(t.action, policy.pos) for t in row] for row in timed]


def run_policy(
    policy: ast.Policy, *, layout: Layout, microbatches: int, scope: Scope
) -> list[list[Timed]]:
    """Per rank, the ops with their start/end times under the unit-cost model."""
    state = _State(policy, layout, microbatches, scope)
    return state.run()


def _preference(
    policy: ast.Policy, first: tuple[Kind, ...] = (), pos: SourcePos | None = None
) -> dict[Kind, int]:
    """Kind -> rank in the tie order: `first`, then `prefer`, then F, I, B, W."""
    backward = {Kind.I, Kind.W} if policy.split_backward else {Kind.B}
    for kind in first + policy.prefer:
        if kind != Kind.F and kind not in backward:
            hint = "with" if policy.split_backward else "without"
            raise ScheduleError(
                f"prefer lists {kind.value}, which a policy {hint} `split backward` never runs",
                pos=pos or policy.pos,
            )
    order = list(dict.fromkeys(first + policy.prefer + (Kind.F, Kind.I, Kind.B, Kind.W)))
    return {kind: index for index, kind in enumerate(order)}


def _when_full(policy: ast.Policy) -> tuple[tuple[int, dict[Kind, int]], ...]:
    """(index of the limit: 0 inflight, 1 retained, preference while it is full) per item."""
    items = []
    for when in policy.when_full:
        if getattr(policy, when.limit) is None:
            raise ScheduleError(
                f"`when {when.limit} full` needs a `{when.limit} <= ...` limit in the policy",
                pos=when.pos,
            )
        index = LIMITS.index(when.limit)
        items.append((index, _preference(policy, when.prefer, when.pos)))
    return tuple(items)


class _State:
    """The list scheduler's state; `run` is the event loop."""

    def __init__(self, policy: ast.Policy, layout: Layout, microbatches: int, scope: Scope):
        self.layout = layout
        self.m = microbatches
        self.stages = len(layout.placement)
        self.backward = Kind.I if policy.split_backward else Kind.B
        self.split = policy.split_backward
        self.rank_of_pref = _preference(policy)
        self.when_full = _when_full(policy)
        self.limits = [self._limits(policy, scope, r) for r in range(layout.ranks)]
        self.next = {k: [0] * self.stages for k in (Kind.F, self.backward, Kind.W)}
        self.finish: dict[tuple[Kind, int, int], int] = {}
        self.inflight = [0] * layout.ranks
        self.retained = [0] * layout.ranks
        self.free_at = [0] * layout.ranks
        self.rows: list[list[Timed]] = [[] for _ in range(layout.ranks)]
        self.pos = policy.pos

    @staticmethod
    def _limits(policy: ast.Policy, scope: Scope, rank: int) -> tuple[float, float]:
        bound = scope.with_name("r", rank)
        inflight = evaluate(policy.inflight, bound) if policy.inflight is not None else float("inf")
        retained = evaluate(policy.retained, bound) if policy.retained is not None else float("inf")
        if inflight < 1 or retained < 1:
            raise ScheduleError(f"policy limits for rank {rank} must be at least 1", pos=policy.pos)
        return inflight, retained

    def total(self) -> int:
        per = 3 if self.split else 2
        return per * self.stages * self.m

    def run(self) -> list[list[Timed]]:
        time, done = 0, 0
        while done < self.total():
            for rank in range(self.layout.ranks):
                if self.free_at[rank] <= time and self._start_best(rank, time):
                    done += 1
            future = [t for t in self.free_at if t > time]
            if not future and done < self.total():
                raise ScheduleError(
                    f"the policy cannot make progress at time {time} with {self.total() - done} "
                    "ops left: its limits are too tight for these R, M, V",
                    pos=self.pos,
                )
            time = min(future, default=time)
        return self.rows

    def _start_best(self, rank: int, time: int) -> bool:
        ready = [a for a in self._candidates(rank) if self._ready(rank, a, time)]
        if not ready:
            return False
        pref = self._preference_now(rank)
        action = min(ready, key=lambda a: (pref[a.kind], a.mb, a.stage))
        end = time + COSTS[action.kind]
        self.finish[(action.kind, action.stage, action.mb)] = end
        self.next[action.kind][action.stage] += 1
        self.free_at[rank] = end
        self._count(rank, action.kind)
        self.rows[rank].append(Timed(action=action, start=time, end=end))
        return True

    def _preference_now(self, rank: int) -> dict[Kind, int]:
        counts = (self.inflight[rank], self.retained[rank])
        for index, pref in self.when_full:
            if counts[index] >= self.limits[rank][index]:
                return pref
        return self.rank_of_pref

    def _count(self, rank: int, kind: Kind) -> None:
        if kind == Kind.F:
            self.inflight[rank] += 1
            self.retained[rank] += 1
        if kind in (Kind.I, Kind.B):
            self.inflight[rank] -= 1
        if kind in (Kind.W, Kind.B):
            self.retained[rank] -= 1

    def _candidates(self, rank: int):
        kinds = (Kind.F, self.backward, Kind.W) if self.split else (Kind.F, Kind.B)
        for stage in self.layout.local[rank]:
            for kind in kinds:
                mb = self.next[kind][stage]
                if mb < self.m:
                    yield Action(stage=stage, kind=kind, mb=mb)

    def _done(self, kind: Kind, stage: int, mb: int, time: int) -> bool:
        end = self.finish.get((kind, stage, mb))
        return end is not None and end <= time

    def _ready(self, rank: int, a: Action, time: int) -> bool:
        if a.kind == Kind.F:
            inflight, retained = self.limits[rank]
            upstream = a.stage == 0 or self._done(Kind.F, a.stage - 1, a.mb, time)
            return upstream and self.inflight[rank] < inflight and self.retained[rank] < retained
        if a.kind == Kind.W:
            return self._done(Kind.I, a.stage, a.mb, time)
        downstream = a.stage == self.stages - 1 or self._done(a.kind, a.stage + 1, a.mb, time)
        return downstream and self._done(Kind.F, a.stage, a.mb, time)

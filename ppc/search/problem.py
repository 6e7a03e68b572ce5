"""The search's view of one training step: ops, their dependencies and integer times.

A `Problem` lists every compute op of the step (F, I, W of each (stage, microbatch),
or F, B without a split backward) with its rank, its duration and what it waits for:

- F(s, mb) after F(s-1, mb) plus the transfer time when the two stages sit on different ranks;
- the first backward op of the last stage after its F; I/B(s, mb) after I/B(s+1, mb) plus
  the transfer time across ranks; W(s, mb) after I(s, mb);
- symmetry: microbatches are interchangeable, so numbering them by the order of their F on
  stage 0 loses nothing; F(0, mb) comes before F(0, mb+1).

Times are integers (the solver needs them). `Resolution` picks the ticks per cost unit:
exact when every cost is a multiple of 1/k for some small k (unit costs, halves, tenths),
else 1000 ticks for the longest op. Durations and transfer times are rounded down, so
the integer problem never takes longer than the real one and its lower bound stays a
lower bound on the real step; the step printed is always ppc's simulator's, in real units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ppc.costs import CostModel

__all__ = ["Dep", "Op", "Problem", "Resolution", "build_problem", "longest_paths", "rank_bound"]

EXACT_STEPS = (1, 2, 4, 5, 8, 10, 20, 25, 50, 100, 1000)
"""Ticks per unit tried for an exact integer form of the costs."""
MAX_EXACT_TICKS = 100_000
"""Longest op, in ticks, an exact scale may produce."""
TICKS_PER_LONGEST_OP = 1000
"""Otherwise: the longest op is this many ticks (resolution 0.1% of it)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """Ticks per cost unit; `exact` when no cost was rounded."""

    per_unit: float
    exact: bool

    def ticks(self, value: float) -> int:
        """`value` (cost units) in ticks, rounded down."""
        return math.floor(value * self.per_unit + 1e-6)

    @classmethod
    def for_values(cls, values: Sequence[float]) -> Resolution:
        positive = [v for v in values if v > 0]
        if not positive:
            return cls(1.0, True)
        longest = max(positive)
        for k in EXACT_STEPS:
            if longest * k > MAX_EXACT_TICKS:
                break
            if all(abs(v * k - round(v * k)) <= 1e-9 * max(1.0, v * k) for v in positive):
                return cls(float(k), True)
        return cls(TICKS_PER_LONGEST_OP / longest, False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One compute op: `kind` ("F", "I", "W" or "B") of `stage` on microbatch `mb`, on `rank`."""

    stage: int
    kind: str
    mb: int
    rank: int

    def __str__(self) -> str:
        return f"{self.stage}{self.kind}{self.mb}"


@dataclass(frozen=True, slots=True)
class Dep:
    """`after` starts no earlier than `before` ends plus `delay`."""

    before: int
    after: int
    delay: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    ranks: int
    microbatches: int
    placement: tuple[int, ...]
    split_backward: bool
    ops: tuple[Op, ...]
    duration: tuple[float, ...]
    """Per op, in cost units."""
    deps: tuple[Dep, ...]
    """Data dependencies (what the simulator enforces)."""
    symmetry: tuple[Dep, ...]
    """Order constraints that lose no solution (F(0, mb) before F(0, mb + 1))."""
    end_offset: float
    """Time after the last compute op until the step ends (gradient-norm all-reduce and
    optimizer step, as the simulator times them)."""

    @property
    def stages(self) -> int:
        return len(self.placement)

    def index(self) -> dict[tuple[int, str, int], int]:
        return {(op.stage, op.kind, op.mb): i for i, op in enumerate(self.ops)}

    def on_rank(self, rank: int) -> list[int]:
        return [i for i, op in enumerate(self.ops) if op.rank == rank]

    @property
    def backward_kind(self) -> str:
        """The op that sends gradients upstream: I with a split backward, else B."""
        return "I" if self.split_backward else "B"

    @property
    def last_kind(self) -> str:
        """The op that frees a (stage, microbatch)'s activations: W, or B."""
        return "W" if self.split_backward else "B"


def build_problem(
    *, ranks: int, microbatches: int, placement: Sequence[int], costs: CostModel, split_backward: bool = True,
    message_bytes: Sequence[int] | None = None,
) -> Problem:
    """`message_bytes[s]`: bytes stage s sends to s + 1 per microbatch, and its gradient
    back (None: no bytes, as the simulator times a program lowered without a model)."""
    placement = tuple(placement)
    stages = len(placement)
    kinds = ("F", "I", "W") if split_backward else ("F", "B")
    ops = tuple(
        Op(stage=s, kind=k, mb=mb, rank=placement[s]) for mb in range(microbatches) for s in range(stages) for k in kinds
    )
    at = {(op.stage, op.kind, op.mb): i for i, op in enumerate(ops)}
    link = [costs.transfer(message_bytes[s] if message_bytes else 0) for s in range(max(stages - 1, 0))]
    back = kinds[1]
    deps = []
    for mb in range(microbatches):
        for s in range(stages):
            cross = link[s] if s + 1 < stages and placement[s] != placement[s + 1] else 0.0
            if s + 1 < stages:
                deps.append(Dep(at[(s, "F", mb)], at[(s + 1, "F", mb)], cross))
                deps.append(Dep(at[(s + 1, back, mb)], at[(s, back, mb)], cross))
            if split_backward:
                deps.append(Dep(at[(s, "I", mb)], at[(s, "W", mb)], 0.0))
        deps.append(Dep(at[(stages - 1, "F", mb)], at[(stages - 1, back, mb)], 0.0))
    symmetry = tuple(Dep(at[(0, "F", mb)], at[(0, "F", mb + 1)], 0.0) for mb in range(microbatches - 1))
    steps = [costs.step([s for s in range(stages) if placement[s] == r]) for r in range(ranks)]
    return Problem(
        ranks=ranks, microbatches=microbatches, placement=placement, split_backward=split_backward, ops=ops,
        duration=tuple(costs.duration(op.kind, op.stage) for op in ops), deps=tuple(deps), symmetry=symmetry,
        end_offset=costs.transfer(8) + max(steps, default=0.0),
    )


def longest_paths(n: int, duration: Sequence[float], deps: Sequence[Dep]) -> tuple[list[float], list[float]]:
    """(earliest start, tail) per op, ignoring the ranks: tail[i] is the longest chain from
    i's start to the end of the last op after it (i's own duration included)."""
    succ: list[list[Dep]] = [[] for _ in range(n)]
    indeg = [0] * n
    for d in deps:
        succ[d.before].append(d)
        indeg[d.after] += 1
    order = [i for i in range(n) if indeg[i] == 0]
    for i in order:  # grows while it is read: Kahn's algorithm
        for d in succ[i]:
            indeg[d.after] -= 1
            if indeg[d.after] == 0:
                order.append(d.after)
    earliest = [0.0] * n
    for i in order:
        for d in succ[i]:
            earliest[d.after] = max(earliest[d.after], earliest[i] + duration[i] + d.delay)
    tail = list(duration)
    for i in reversed(order):
        for d in succ[i]:
            tail[i] = max(tail[i], duration[i] + d.delay + tail[d.after])
    return earliest, tail


def rank_bound(
    problem: Problem, duration: Sequence[float], delays: Sequence[float],
    held: Sequence[tuple[int, int]] | None = None,
) -> float:
    """A lower bound on the last compute op's end. `delays` gives each dependency's delay
    (same units as `duration`); `held[r]` bounds how many forwards rank r can run before
    its first backward and how many W it can leave after its last (None: no budget).

    The bounds, each a maximum over ranks: the earliest any of the rank's ops can start,
    plus all its work, plus the least that must follow its last op; the same up to the end
    of its last backward (I or B), which leaves at most `held[r][1]` W after it (each holds
    an activation set meanwhile), plus the least that must follow a backward; that from
    the earliest backward, less the forwards that may precede it; and the longest chain of
    one microbatch."""
    deps = [Dep(d.before, d.after, delay) for d, delay in zip(problem.deps + problem.symmetry, delays)]
    earliest, tail = longest_paths(len(problem.ops), duration, deps)
    bound = max((e + t for e, t in zip(earliest, tail)), default=0.0)
    back = problem.backward_kind
    for r in range(problem.ranks):
        mine = problem.on_rank(r)
        if not mine:
            continue
        busy = sum(duration[i] for i in mine)
        bound = max(bound, min(earliest[i] for i in mine) + busy + min(tail[i] - duration[i] for i in mine))
        backs = [i for i in mine if problem.ops[i].kind == back]
        forwards = sorted((duration[i] for i in mine if problem.ops[i].kind == "F"), reverse=True)
        weights = sorted((duration[i] for i in mine if problem.ops[i].kind == "W"), reverse=True)
        before, after = held[r] if held is not None else (len(forwards), len(weights))
        head = min(earliest[i] for i in mine)
        last = busy - sum(weights[:after])  # work done by the end of the last backward
        follow = min(tail[i] - duration[i] for i in backs)
        bound = max(bound, head + last + follow,
                    min(earliest[i] for i in backs) + last - sum(forwards[:before]) + follow)
    return bound

"""Timeline of a Program under a cost model.

Semantics (what the executor does): a rank runs its instructions in order; a compute op
takes its cost; a send is posted without waiting and its message arrives after the
transfer time (latency + bytes / bandwidth); a receive waits for its message; a
REDUCE_TIED waits for all owning ranks and takes the transfer time of its tensor; STEP
takes the optimizer time of the rank's stages (0 unless the costs give `step`). From the start and end of every instruction follow the makespan, each
rank's busy and idle time, the bubble and the critical path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ppc.sim.graph import ProgramGraph
from ppc.sim.memory import rank_memory
from ppc.sim.validate import check

from ppc.compiler import opcodes as opc
from ppc.compiler.instructions import Instruction, Program
from ppc.compiler.stage_graph import StageGraph
from ppc.costs import CostModel
from ppc.errors import CostError

__all__ = ["RankStats", "Span", "Timeline", "simulate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RankStats:
    rank: int
    busy: float
    """Time spent computing (F, B, I, W)."""
    idle: float
    """makespan - busy."""
    bubble: float
    """idle / makespan."""
    peak_activations: int
    peak_bytes: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """One instruction's place in time."""

    rank: int
    instruction: Instruction
    start: float
    end: float

    def to_json(self) -> dict:
        return {"rank": self.rank, "op": str(self.instruction), "start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    program: Program
    costs: CostModel
    makespan: float
    per_rank: tuple[RankStats, ...]
    critical_path: tuple[Span, ...]
    """Compute ops on a longest chain of waits, in time order."""
    offset: tuple[int, ...]
    start: list[float]
    """start[offset[r] + i] of instruction i of rank r."""
    end: list[float]

    @property
    def bubble(self) -> float:
        """Idle fraction over all ranks: 1 - sum(busy) / (R * makespan)."""
        if self.makespan <= 0:
            return 0.0
        busy = sum(s.busy for s in self.per_rank)
        return 1.0 - busy / (len(self.per_rank) * self.makespan)

    @property
    def peak_activations(self) -> int:
        return max(s.peak_activations for s in self.per_rank)

    def spans(self, rank: int | None = None, *, compute_only: bool = False) -> Iterator[Span]:
        """Per-instruction (rank, instruction, start, end) records."""
        ranks = range(self.program.ranks) if rank is None else (rank,)
        for r in ranks:
            base = self.offset[r]
            for i, instr in enumerate(self.program.instructions[r]):
                if compute_only and not instr.op.is_compute:
                    continue
                yield Span(rank=r, instruction=instr, start=self.start[base + i], end=self.end[base + i])


def simulate(
    program: Program,
    costs: CostModel,
    *,
    graph: StageGraph | None = None,
    checked: ProgramGraph | None = None,
) -> Timeline:
    """Validate `program` (unless `checked` is given) and time it under `costs`."""
    if costs.stages != program.stages:
        raise CostError(f"costs give {costs.stages} stages, the program has {program.stages}")
    pg = checked or check(program, graph)
    start, end, pred, busy = _run(pg, costs)
    makespan = max(end, default=0.0)
    memory = rank_memory(program, costs, codes=pg.code)
    stats = []
    for r in range(program.ranks):
        idle = makespan - busy[r]
        stats.append(
            RankStats(
                rank=r, busy=busy[r], idle=idle, bubble=idle / makespan if makespan > 0 else 0.0,
                peak_activations=memory[r].peak_activations, peak_bytes=memory[r].peak_bytes,
            )
        )
    path = _critical_path(pg, start, end, pred)
    return Timeline(
        program=program, costs=costs, makespan=makespan, per_rank=tuple(stats),
        critical_path=path, offset=tuple(pg.offset), start=start, end=end,
    )


def _run(pg: ProgramGraph, costs: CostModel):
    instrs, code, partner, rank_of = pg.instrs, pg.code, pg.partner, pg.rank_of
    ranks = pg.program.ranks
    n = len(instrs)
    dur = [[costs.duration(k, s) for s in range(costs.stages)] for k in "FBIW"]
    transfer = costs.transfer
    placement = pg.program.placement
    step_cost = [costs.step([s for s in range(len(placement)) if placement[s] == r]) for r in range(ranks)]
    seconds_of: dict[int, float] = {}
    start = [0.0] * n
    end = [0.0] * n
    pred = [-1] * n
    posted = bytearray(n)
    arrive = [0.0] * n
    reached = bytearray(n)
    group_of = {g: members for members in pg.groups.values() for g in members}
    ptr = list(pg.offset)
    limit = pg.offset[1:] + [n]
    free = [0.0] * ranks
    busy = [0.0] * ranks
    waiting: dict[int, list[int]] = {}
    stack = list(range(ranks - 1, -1, -1))
    while stack:
        r = stack.pop()
        g, lim, t, work = ptr[r], limit[r], free[r], 0.0
        while g < lim:
            c = code[g]
            if c <= opc.W:
                start[g] = t
                d = dur[c][instrs[g].stage]
                t += d
                work += d
                end[g] = t
            elif c == opc.SEND_F or c == opc.SEND_B:
                start[g] = end[g] = t
                tensors = instrs[g].tensors
                seconds = seconds_of.get(id(tensors))
                if seconds is None:
                    seconds = seconds_of[id(tensors)] = transfer(sum(x.bytes for x in tensors))
                arrive[g] = t + seconds
                posted[g] = 1
                woken = waiting.pop(g, None)
                if woken:
                    stack.extend(woken)
            elif c == opc.RECV_F or c == opc.RECV_B:
                h = partner[g]
                if not posted[h]:
                    waiting.setdefault(h, []).append(r)
                    break
                start[g] = t
                if arrive[h] > t:
                    t = arrive[h]
                    pred[g] = h
                end[g] = t
            elif c == opc.REDUCE_TIED:
                reached[g] = 1
                start[g] = t
                members = group_of[g]
                if not all(reached[m] for m in members):
                    break
                last = max(members, key=start.__getitem__)
                t0 = start[last]
                t = t0 + transfer(instrs[g].bytes)
                for m in members:
                    end[m] = t
                    if m != last:
                        pred[m] = last
                    if m != g:
                        mr = rank_of[m]
                        ptr[mr], free[mr] = m + 1, t
                        stack.append(mr)
            elif c == opc.STEP:
                start[g] = t
                t += step_cost[r]
                work += step_cost[r]
                end[g] = t
            else:
                start[g] = end[g] = t
            g += 1
        ptr[r], free[r] = g, t
        busy[r] += work
    stuck = [r for r in range(ranks) if ptr[r] < limit[r]]
    if stuck:  # validation rules this out; keep the failure loud if it ever happens
        raise RuntimeError(f"timeline stalled on ranks {stuck}")
    return start, end, pred, busy


def _critical_path(pg: ProgramGraph, start, end, pred) -> tuple[Span, ...]:
    if not end:
        return ()
    g = max(range(len(end)), key=end.__getitem__)
    path = []
    while g >= 0:
        r = pg.rank_of[g]
        if pg.code[g] <= opc.W:
            path.append(Span(rank=r, instruction=pg.instrs[g], start=start[g], end=end[g]))
        if pred[g] >= 0:
            g = pred[g]
        elif g > pg.offset[r]:
            g -= 1
        else:
            g = -1
    path.reverse()
    return tuple(path)

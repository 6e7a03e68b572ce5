"""Timeline of a Program under a cost model.

Semantics (what the executor does): a rank runs its instructions in order; a compute op
takes its cost; a send is posted without waiting and its message arrives after the
transfer time (latency + bytes / bandwidth); a receive waits for its message; a
REDUCE_TIED waits for all owning ranks and takes the transfer time of its tensor; STEP
takes the optimizer time of the rank's stages (0 unless the costs give `step`). From the
start and end of every instruction follow the makespan, each rank's busy and idle time,
the bubble and the critical path.

Data parallelism (D pipeline replicas, `dp`): one pipeline is simulated and the other
replicas are cost terms. A REDUCE_GRAD starts when its rank reaches it and runs on the
rank's network, one at a time in program order, for the ring all-reduce time of its
gradient bytes; the rank goes on computing meanwhile. ZeRO-1 (`zero=1`) is timed as the
executor runs it: torch's ZeroRedundancyOptimizer steps from full gradients, so they are
all-reduced in full, and each replica's updated parameters are then gathered (an
all-gather after the optimizer step): less optimizer memory, more traffic. STEP waits for the
rank's outstanding reductions, then for its global sync. How much later STEP starts than
it would without reductions is the rank's exposed reduction time.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass

from ppc.sim.memory import rank_memory

from ppc.costs import CostModel
from ppc.errors import CostError
from ppc.ir import ops
from ppc.ir.program import Instruction, Program
from ppc.ir.stage_graph import StageGraph
from ppc.verify.graph import ProgramGraph
from ppc.verify.program import check

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
    reduce: float = 0.0
    """Network time of the rank's data-parallel gradient reductions (REDUCE_GRAD)."""
    exposed_reduce: float = 0.0
    """How much later the rank's STEP starts than it would without those reductions:
    the part of them its compute did not hide."""


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
    dp: int = 1
    """Pipeline replicas the reductions were timed for (the simulated pipeline is one)."""
    zero: int = 0
    """1: gradients reduce-scattered (ZeRO-1), parameters all-gathered after the step."""

    @property
    def exposed_reduce(self) -> float:
        """The largest exposed reduction time of any rank."""
        return max((s.exposed_reduce for s in self.per_rank), default=0.0)

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
    dp: int = 1,
    zero: int = 0,
) -> Timeline:
    """Validate `program` (unless `checked` is given) and time it under `costs`, its
    gradient reductions (if any) across `dp` pipeline replicas."""
    if costs.stages != program.stages:
        raise CostError(f"costs give {costs.stages} stages, the program has {program.stages}")
    if dp < 1 or zero not in (0, 1):
        raise CostError(f"need dp >= 1 and zero 0 or 1, got dp={dp!r}, zero={zero!r}")
    pg = checked or check(program, graph)
    if dp > 1 and costs.cores is not None:
        # a CPU host's cores serve every replica's ranks alike: each pipeline gets 1/dp of them
        costs = dataclasses.replace(costs, cores=costs.cores / dp)
    network = _Network(pg, costs, dp, zero)
    start, end, pred, busy = _run(pg, costs, network)
    makespan = max(end, default=0.0)
    memory = rank_memory(program, costs, codes=pg.code)
    stats = []
    for r in range(program.ranks):
        idle = makespan - busy[r]
        stats.append(
            RankStats(
                rank=r, busy=busy[r], idle=idle, bubble=idle / makespan if makespan > 0 else 0.0,
                peak_activations=memory[r].peak_activations, peak_bytes=memory[r].peak_bytes,
                reduce=network.total[r], exposed_reduce=network.exposed[r],
            )
        )
    path = _critical_path(pg, start, end, pred)
    return Timeline(
        program=program, costs=costs, makespan=makespan, per_rank=tuple(stats),
        critical_path=path, offset=tuple(pg.offset), start=start, end=end, dp=dp, zero=zero,
    )


class _Network:
    """Each rank's data-parallel reductions: they run one at a time, in program order,
    beside the rank's compute. Both engines call `reduce` when a rank reaches a
    REDUCE_GRAD and `drain` when it reaches STEP."""

    def __init__(self, pg: ProgramGraph, costs: CostModel, dp: int, zero: int):
        ranks = pg.program.ranks
        is_reduce = ops.Codes.get().is_reduce
        self.seconds = {g: costs.all_reduce(pg.instrs[g].bytes, dp) for g, c in enumerate(pg.code) if is_reduce[c]}
        self.free = [0.0] * ranks
        """When the rank's network finishes its last reduction started so far."""
        self.last = [-1] * ranks
        self.total = [0.0] * ranks
        self.exposed = [0.0] * ranks
        gathered = [0] * ranks  # ZeRO-1: the replicas gather their updated parameters after STEP
        for g in self.seconds:
            gathered[pg.rank_of[g]] += pg.instrs[g].bytes
        self.after_step = [costs.reduce_scatter(b, dp) if zero else 0.0 for b in gathered]

    def reduce(self, g: int, r: int, t: float, start: list[float], end: list[float], pred: list[int]) -> None:
        """Rank r reaches reduction g at time t: it starts when the network is free."""
        began = max(t, self.free[r])
        if began > t:
            pred[g] = self.last[r]
        start[g], end[g] = began, began + self.seconds[g]
        self.free[r], self.last[r] = end[g], g
        self.total[r] += self.seconds[g]

    def drain(self, g: int, r: int, t: float, pred: list[int]) -> float:
        """Rank r reaches its STEP g at time t: when its reductions are all done."""
        if self.free[r] <= t:
            return t
        self.exposed[r] = self.free[r] - t
        pred[g] = self.last[r]
        return self.free[r]


def _run(pg: ProgramGraph, costs: CostModel, network: _Network):
    if costs.shares_cores(pg.program.ranks):
        return _SharedCores(pg, costs, network).run()
    instrs, code, partner, rank_of = pg.instrs, pg.code, pg.partner, pg.rank_of
    ranks = pg.program.ranks
    n = len(instrs)
    codes = ops.Codes.get()
    is_compute, is_comm, is_send, is_recv = codes.is_compute, codes.is_comm, codes.is_send, codes.is_recv
    is_collective, is_step, is_reduce = codes.is_collective, codes.is_step, codes.is_reduce
    dur = _durations(costs)
    overlapped = _overlapped_durations(pg, costs)
    transfer = costs.transfer
    post_cost = costs.post
    step_cost = [c + a for c, a in zip(_step_costs(pg, costs), network.after_step)]
    send_seconds = _send_seconds(costs)
    start = [0.0] * n
    end = [0.0] * n
    pred = [-1] * n
    posted = bytearray(n)
    opened = bytearray(n)
    arrive = [0.0] * n
    reached = bytearray(n)
    group_of = {g: members for members in pg.groups.values() for g in members}
    steps = [g for g in range(n) if is_step[code[g]]]
    steps_reached = 0
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
            if is_compute[c]:
                start[g] = t
                per_stage = dur[c]
                d = per_stage[instrs[g].stage] if per_stage is not None else overlapped[g]
                t += d
                work += d
                end[g] = t
            elif is_comm[c]:
                if not opened[g]:
                    # the executor posts a run of adjacent transfers as one batch: it pays
                    # `post` once, and every send leaves before any receive is waited for
                    t += post_cost
                    j = g
                    while j < lim and is_comm[code[j]]:
                        opened[j] = 1
                        if is_send[code[j]]:
                            start[j] = end[j] = t
                            arrive[j] = t + send_seconds(instrs[j])
                            posted[j] = 1
                            woken = waiting.pop(j, None)
                            if woken:
                                stack.extend(woken)
                        j += 1
                if is_recv[c]:
                    h = partner[g]
                    if not posted[h]:
                        waiting.setdefault(h, []).append(r)
                        break
                    start[g] = t
                    if arrive[h] > t:
                        t = arrive[h]
                        pred[g] = h
                    end[g] = t
            elif is_collective[c]:
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
            elif is_reduce[c]:
                network.reduce(g, r, t, start, end, pred)
            elif is_step[c]:
                # its own reductions first, then the global gradient norm is all-reduced:
                # every rank waits for the last
                t = network.drain(g, r, t, pred)
                start[g] = t
                steps_reached += 1
                if steps_reached < len(steps):
                    break
                last = max(steps, key=start.__getitem__)
                synced = start[last] + transfer(8)
                for m in steps:
                    mr = rank_of[m]
                    end[m] = synced + step_cost[mr]
                    busy[mr] += step_cost[mr]
                    if m != last:
                        pred[m] = last
                    if m != g:
                        ptr[mr], free[mr] = m + 1, end[m]
                t = end[g]
            else:
                start[g] = end[g] = t
            g += 1
        ptr[r], free[r] = g, t
        busy[r] += work
    stuck = [r for r in range(ranks) if ptr[r] < limit[r]]
    if stuck:  # validation rules this out; keep the failure loud if it ever happens
        raise RuntimeError(f"timeline stalled on ranks {stuck}")
    return start, end, pred, busy


def _durations(costs: CostModel) -> list[list[float] | None]:
    """dur[code][stage] for every ordinary compute kind in the op table (its cost rule)."""
    return [[costs.duration(k, s) for s in range(costs.stages)] if k.is_compute and not k.parts
            else None for k in ops.table()]


def _overlapped_durations(pg: ProgramGraph, costs: CostModel) -> dict[int, float]:
    """Time of each overlapped op (its cost rule over its parts), by instruction id."""
    is_composite = ops.Codes.get().is_composite
    return {g: costs.overlapped_duration(i.op, [(p.op, p.stage, p.mb) for p in i.parts])
            for g, (c, i) in enumerate(zip(pg.code, pg.instrs)) if is_composite[c]}


def _send_seconds(costs: CostModel):
    """A send's transfer time, computed once per tensor list (a program's sends share few)."""
    cache: dict[int, float] = {}

    def seconds(instr: Instruction) -> float:
        key = id(instr.tensors)
        value = cache.get(key)
        if value is None:
            value = cache[key] = costs.transfer(sum(x.bytes for x in instr.tensors))
        return value

    return seconds


def _step_costs(pg: ProgramGraph, costs: CostModel) -> list[float]:
    stages_of: list[list[int]] = [[] for _ in range(pg.program.ranks)]
    for stage, rank in enumerate(pg.program.placement):
        stages_of[rank].append(stage)
    return [costs.step(stages) for stages in stages_of]


class _SharedCores:
    """The timeline when ranks share too few CPU cores (processor sharing).

    Event-driven: a rank is computing (CPU work left: an op, a group's posting, its
    optimizer step), sleeping until a known time (a message on its way, a collective),
    blocked (on a send not yet posted, or on the other members of a collective), or done.
    Between events each of the n computing ranks progresses at
    min(1, cores / (n * threads)) seconds of work per second, so a cost measured alone
    stretches exactly while more ranks compute than the cores hold. Otherwise the same
    semantics as the one-device-per-rank pass; busy time is wall time inside compute ops.
    """

    def __init__(self, pg: ProgramGraph, costs: CostModel, network: _Network | None = None):
        self.pg, self.costs = pg, costs
        self.network = network or _Network(pg, costs, 1, 0)
        n = len(pg.instrs)
        self.ranks = pg.program.ranks
        self.dur = _durations(costs)
        self.overlapped = _overlapped_durations(pg, costs)
        self.codes = ops.Codes.get()
        self.step_cost = [c + a for c, a in zip(_step_costs(pg, costs), self.network.after_step)]
        self.send_seconds = _send_seconds(costs)
        self.start, self.end, self.pred = [0.0] * n, [0.0] * n, [-1] * n
        self.arrive = [0.0] * n
        self.posted, self.opened, self.reached = bytearray(n), bytearray(n), bytearray(n)
        self.group_of = {g: members for members in pg.groups.values() for g in members}
        self.steps = [g for g in range(n) if self.codes.is_step[pg.code[g]]]
        self.ptr = list(pg.offset)
        self.limit = pg.offset[1:] + [n]
        self.busy = [0.0] * self.ranks
        self.left: dict[int, float] = {}
        """CPU work left, per computing rank."""
        self.ends: dict[int, bool] = {}
        """Whether the computing rank's work ends its instruction (an op or STEP, not posting)."""
        self.began: dict[int, float] = {}
        self.sleep: list[tuple[float, int]] = []
        self.waiting: dict[int, list[int]] = {}
        self.ready: list[int] = list(range(self.ranks - 1, -1, -1))
        self.now = 0.0

    def run(self):
        while True:
            while self.ready:
                self._advance(self.ready.pop())
            if not self.left and not self.sleep:
                break
            rate = min(1.0, self.costs.cores / (len(self.left) * self.costs.threads)) if self.left else 0.0
            t_done = self.now + min(self.left.values()) / rate if self.left else math.inf
            t_next = min(t_done, self.sleep[0][0] if self.sleep else math.inf)
            progress = (t_next - self.now) * rate
            self.now = t_next
            for r in list(self.left):
                self.left[r] -= progress
                if self.left[r] <= 1e-12 * max(1.0, t_next):
                    self._finish(r)
            while self.sleep and self.sleep[0][0] <= self.now:
                self.ready.append(heapq.heappop(self.sleep)[1])
        stuck = [r for r in range(self.ranks) if self.ptr[r] < self.limit[r]]
        if stuck:  # validation rules this out; keep the failure loud if it ever happens
            raise RuntimeError(f"timeline stalled on ranks {stuck}")
        return self.start, self.end, self.pred, self.busy

    def _compute(self, r: int, seconds: float, *, ends: bool) -> None:
        self.left[r], self.ends[r], self.began[r] = seconds, ends, self.now
        if seconds <= 0:
            self._finish(r)

    def _finish(self, r: int) -> None:
        del self.left[r]
        if self.ends.pop(r):
            g = self.ptr[r]
            self.end[g] = self.now
            self.busy[r] += self.now - self.began[r]
            self.ptr[r] = g + 1
        self.ready.append(r)

    def _post_sends(self, g: int, lim: int) -> None:
        """Post every send of the transfer group g belongs to (from g on) at `now`."""
        code, now, codes = self.pg.code, self.now, self.codes
        while g < lim and codes.is_comm[code[g]]:
            if codes.is_send[code[g]] and not self.posted[g]:
                self.start[g] = self.end[g] = now
                self.arrive[g] = now + self.send_seconds(self.pg.instrs[g])
                self.posted[g] = 1
                self.ready.extend(self.waiting.pop(g, ()))
            g += 1

    def _advance(self, r: int) -> None:
        """Run rank r's instructions at `now` until it computes, sleeps or blocks."""
        pg, code, now, codes = self.pg, self.pg.code, self.now, self.codes
        g, lim = self.ptr[r], self.limit[r]
        self.ptr[r] = lim
        while g < lim:
            c = code[g]
            if codes.is_compute[c]:
                self.start[g] = now
                self.ptr[r] = g
                per_stage = self.dur[c]
                seconds = per_stage[pg.instrs[g].stage] if per_stage is not None else self.overlapped[g]
                self._compute(r, seconds, ends=True)
                return
            if codes.is_comm[c]:
                if not self.opened[g]:  # a new batch of transfers: pay for posting it first
                    j = g
                    while j < lim and codes.is_comm[code[j]]:
                        self.opened[j] = 1
                        j += 1
                    self.ptr[r] = g
                    self._compute(r, self.costs.post, ends=False)
                    return
                self._post_sends(g, lim)
                if codes.is_recv[c]:
                    h = pg.partner[g]
                    if not self.reached[g]:
                        self.reached[g] = 1
                        self.start[g] = now
                    if not self.posted[h]:
                        self.ptr[r] = g
                        self.waiting.setdefault(h, []).append(r)
                        return
                    if self.arrive[h] > now:
                        self.pred[g] = h
                        self.ptr[r] = g
                        heapq.heappush(self.sleep, (self.arrive[h], r))
                        return
                    self.end[g] = now
            elif codes.is_collective[c]:
                self.reached[g] = 1
                self.start[g] = now
                members = self.group_of[g]
                if all(self.reached[m] for m in members):
                    last = max(members, key=self.start.__getitem__)
                    done = now + self.costs.transfer(pg.instrs[g].bytes)
                    for m in members:
                        self.end[m] = done
                        if m != last:
                            self.pred[m] = last
                        self.ptr[pg.rank_of[m]] = m + 1
                        heapq.heappush(self.sleep, (done, pg.rank_of[m]))
                else:
                    self.ptr[r] = g
                return
            elif codes.is_reduce[c]:  # on the network: the rank goes on at once
                self.network.reduce(g, r, now, self.start, self.end, self.pred)
            elif codes.is_step[c]:
                self.ptr[r] = g
                if self.reached[g]:  # synced: the optimizer step itself
                    self._compute(r, self.step_cost[r], ends=True)
                    return
                done = self.network.drain(g, r, now, self.pred)
                if done > now:  # its reductions first
                    heapq.heappush(self.sleep, (done, r))
                    return
                self.reached[g] = 1
                self.start[g] = now
                if all(self.reached[m] for m in self.steps):
                    last = max(self.steps, key=self.start.__getitem__)
                    synced = now + self.costs.transfer(8)
                    for m in self.steps:
                        if m != last:
                            self.pred[m] = last
                        heapq.heappush(self.sleep, (synced, pg.rank_of[m]))
                return
            else:
                self.start[g] = self.end[g] = now
            g += 1


def _critical_path(pg: ProgramGraph, start, end, pred) -> tuple[Span, ...]:
    if not end:
        return ()
    g = max(range(len(end)), key=end.__getitem__)
    path = []
    is_compute = ops.Codes.get().is_compute
    while g >= 0:
        r = pg.rank_of[g]
        if is_compute[pg.code[g]]:
            path.append(Span(rank=r, instruction=pg.instrs[g], start=start[g], end=end[g]))
        if pred[g] >= 0:
            g = pred[g]
        elif g > pg.offset[r]:
            g -= 1
        else:
            g = -1
    path.reverse()
    return tuple(path)

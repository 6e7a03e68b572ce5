"""Checks of a compute order that need no timing: every op once, in range, on its
stage's rank, in dependency order, and complete.

One checker for every caller: schedule expansion (positions are .ppc lines), lowering,
and the simulator's validation of a Program (positions are instruction indices). What
counts as complete and in order comes from the op table's phases: each (stage,
microbatch) runs each required phase ("forward", "input_grad", "weight_grad") exactly
once, and an op runs only after the phases it `needs` and before those it `precedes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ppc.errors import SourcePos, ValidationError
from ppc.ir import ops
from ppc.ir.ops import REQUIRED_PHASES, OpKind
from ppc.ir.order import ComputeOrder
from ppc.ir.routes import Route

__all__ = ["ComputeIndex", "check_local_routes", "check_order", "index_compute", "index_order"]

Row = Sequence[tuple]
"""One rank's compute ops as (kind, stage, mb, parts), in program order; `parts` holds an
overlapped op's (kind, stage, mb) parts, else is empty."""

Locate = Callable[[int, int], "SourcePos | None"]

_PHASE = {name: p for p, name in enumerate(REQUIRED_PHASES)}
_PHASE_WORDS = {"forward": "forward", "input_grad": "input gradients", "weight_grad": "weight gradients"}
FORWARD, INPUT_GRAD, WEIGHT_GRAD = range(3)


@dataclass(slots=True, kw_only=True)
class ComputeIndex:
    """Where each compute op runs. Global op id g = offset[rank] + position in its row."""

    stages: int
    microbatches: int
    offset: list[int]
    ops: list[tuple[OpKind, int, int]]
    """ops[g] = (kind, stage, mb)."""
    rank_of: list[int]
    pos_of: list[int]
    """pos_of[g] = position in the rank's compute row."""
    by_phase: list[int]
    """by_phase[(stage * M + mb) * 3 + phase] = the op that runs it (-1: none)."""
    by_kind: list[int]
    """by_kind[(stage * M + mb) * K + kind slot] = that op (-1: none)."""
    kinds: int
    """K: compute kinds in the table when the index was built."""
    parts: dict[int, tuple[tuple[OpKind, int, int], ...]]
    """The (kind, stage, mb) parts of each overlapped op, by op id."""

    def find(self, kind: str, stage: int, mb: int) -> int:
        """The op of `kind` (by name) on (stage, mb), or -1."""
        slot = ops.Codes.get().slot[ops.get(kind).code]
        return self.by_kind[(stage * self.microbatches + mb) * self.kinds + slot]

    def forward(self, stage: int, mb: int) -> int:
        return self.by_phase[(stage * self.microbatches + mb) * 3 + FORWARD]

    def backward(self, stage: int, mb: int) -> int:
        """The op that makes the input gradients of (stage, mb): its B, else its I."""
        return self.by_phase[(stage * self.microbatches + mb) * 3 + INPUT_GRAD]

    def last_backward(self, stage: int, mb: int) -> int:
        """The op after which (stage, mb)'s activations are freed: B, else W."""
        return self.by_phase[(stage * self.microbatches + mb) * 3 + WEIGHT_GRAD]

    def forward_column(self, stage: int) -> list[int]:
        """forward(stage, mb) for every mb."""
        base = stage * self.microbatches * 3
        return self.by_phase[base + FORWARD: base + self.microbatches * 3: 3]

    def backward_column(self, stage: int) -> list[int]:
        """backward(stage, mb) for every mb."""
        base = stage * self.microbatches * 3
        return self.by_phase[base + INPUT_GRAD: base + self.microbatches * 3: 3]

    def name(self, g: int) -> str:
        kind, stage, mb = self.ops[g]
        parts = self.parts.get(g)
        if parts:
            return f"({';'.join(f'{s}{k.name}{m}' for k, s, m in parts)}){kind.csv}"
        return f"{stage}{kind.name}{mb}"


def last_backward_of(index: ComputeIndex, stages: Sequence[int]) -> list[int]:
    """Per microbatch, the latest input-gradient op (B or I) among `stages` (one rank)."""
    columns = [index.backward_column(s) for s in stages]
    return columns[0] if len(columns) == 1 else [max(ops) for ops in zip(*columns)]


def first_forward_of(index: ComputeIndex, stages: Sequence[int]) -> list[int]:
    """Per microbatch, the earliest F among `stages` (one rank)."""
    columns = [index.forward_column(s) for s in stages]
    return columns[0] if len(columns) == 1 else [min(ops) for ops in zip(*columns)]


def _no_pos(rank: int, index: int) -> SourcePos | None:
    return None


class _Namer:
    """Words for places in messages: `positions[r][i]` renames op i of rank r (programs
    name instructions, not compute ops); `locate` gives a source position."""

    def __init__(self, positions, locate: Locate):
        self.positions, self.locate = positions, locate

    def at(self, rank: int, i: int) -> str:
        return f"rank {rank} position {self.positions[rank][i] if self.positions else i}"

    def other(self, rank: int, i: int) -> str:
        """Another op's place: its source line when known, else its position."""
        pos = self.locate(rank, i)
        return f"line {pos.line}" if pos is not None else self.at(rank, i)


def index_compute(
    rows: Sequence[Row],
    *,
    placement: Sequence[int],
    microbatches: int,
    positions: Sequence[Sequence[int]] | None = None,
    locate: Locate = _no_pos,
    missing_pos: SourcePos | None = None,
) -> ComputeIndex:
    """Index the ops and check the order; raises ValidationError for the first problem."""
    names = _Namer(positions, locate)
    codes = ops.Codes.get()
    kinds = len(codes.compute)
    stages = len(placement)
    index = ComputeIndex(
        stages=stages, microbatches=microbatches, offset=[], ops=[], rank_of=[], pos_of=[],
        by_phase=[-1] * (stages * microbatches * 3), by_kind=[-1] * (stages * microbatches * kinds),
        kinds=kinds, parts={},
    )
    for rank, row in enumerate(rows):
        _index_row(index, rank, list(row), placement, names, codes)
    _check_needs(index, names)
    _check_complete(index, placement, missing_pos)
    return index


def _index_row(index: ComputeIndex, rank: int, row: list, placement, names: _Namer, codes) -> None:
    base = len(index.ops)
    index.offset.append(base)
    M, K = index.microbatches, index.kinds
    slot_of, by_kind, by_phase = codes.slot, index.by_kind, index.by_phase
    for i, (kind, stage, mb, parts) in enumerate(row):
        g = base + i
        if parts:
            index.parts[g] = parts
        for unit_kind, unit_stage, unit_mb in parts or ((kind, stage, mb),):
            if not (0 <= unit_stage < index.stages and 0 <= unit_mb < M and placement[unit_stage] == rank):
                _explain_misplaced(rank, i, unit_kind, unit_stage, unit_mb, placement, M, names)
            pair = unit_stage * M + unit_mb
            k = pair * K + slot_of[unit_kind.code]
            if by_kind[k] >= 0:
                first = index.pos_of[by_kind[k]]
                raise ValidationError(
                    f"{names.at(rank, i)}: {unit_stage}{unit_kind.name}{unit_mb} runs twice (first at "
                    f"{names.other(rank, first)})", pos=names.locate(rank, i))
            by_kind[k] = g
            for phase in unit_kind.phases:
                p = pair * 3 + _PHASE[phase]
                if by_phase[p] >= 0:
                    other = index.name(by_phase[p])
                    raise ValidationError(
                        f"{names.at(rank, i)}: {unit_stage}{unit_kind.name}{unit_mb} repeats the "
                        f"{_PHASE_WORDS[phase]} of stage {unit_stage} microbatch {unit_mb}, which "
                        f"{other} already computes (a backward is either B, or I then W)",
                        pos=names.locate(rank, i))
                by_phase[p] = g
        index.ops.append((kind, stage, mb))
        index.pos_of.append(i)
    index.rank_of.extend([rank] * len(row))


def _explain_misplaced(rank, i, kind, stage, mb, placement, microbatches, names: _Namer) -> None:
    where, name, pos = names.at(rank, i), f"{stage}{kind.name}{mb}", names.locate(rank, i)
    if not 0 <= stage < len(placement):
        raise ValidationError(
            f"{where}: {name} names stage {stage}, but there are {len(placement)} stages", pos=pos)
    if not 0 <= mb < microbatches:
        raise ValidationError(
            f"{where}: {name} names microbatch {mb}, but there are {microbatches} microbatches",
            pos=pos)
    raise ValidationError(
        f"{where}: {name} runs on rank {rank}, but stage {stage} is placed on rank "
        f"{placement[stage]}", pos=pos)


def _check_needs(index: ComputeIndex, names: _Namer) -> None:
    """Each op runs after the ops that did the phases it needs (same rank, earlier)."""
    by_phase, M, parts = index.by_phase, index.microbatches, index.parts
    for g, op in enumerate(index.ops):
        for kind, stage, mb in parts.get(g) or (op,):
            _check_unit_needs(index, names, g, kind, stage, mb, by_phase, M)


def _check_unit_needs(index: ComputeIndex, names: _Namer, g, kind, stage, mb, by_phase, M) -> None:
    """One computed unit (an op, or a part of an overlapped op g) against its needs and
    the phases it must precede."""
    for phase in kind.precedes:
        d = by_phase[(stage * M + mb) * 3 + _PHASE[phase]]
        if 0 <= d < g:
            rank = index.rank_of[g]
            raise ValidationError(
                f"{names.at(rank, index.pos_of[g])}: {index.name(g)} comes after {index.name(d)} "
                f"(at {names.other(rank, index.pos_of[d])}), which it must precede",
                pos=names.locate(rank, index.pos_of[g]))
    for phase in kind.needs:
        d = by_phase[(stage * M + mb) * 3 + _PHASE[phase]]
        if 0 <= d < g:  # earlier on this rank (one rank runs all of a stage's ops)
            continue
        rank, at, pos = index.rank_of[g], names.at(index.rank_of[g], index.pos_of[g]), names.locate(
            index.rank_of[g], index.pos_of[g])
        if d < 0:
            message = (f"{index.name(g)} needs the {_PHASE_WORDS[phase]} of stage {stage} "
                       f"microbatch {mb}, which no op computes")
        elif d == g:
            message = (f"{index.name(g)} overlaps the backward of stage {stage} microbatch {mb} "
                       "with its own forward")
        else:
            message = (f"{index.name(g)} comes before {index.name(d)} (at "
                       f"{names.other(rank, index.pos_of[d])}), which it needs")
        raise ValidationError(f"{at}: {message}", pos=pos)


def _check_complete(index: ComputeIndex, placement, missing_pos: SourcePos | None) -> None:
    """Each (stage, mb) runs every required phase (fast count first, then explain)."""
    by_phase = index.by_phase
    if -1 not in by_phase:
        return
    missing = by_phase.index(-1)
    pair, phase = divmod(missing, 3)
    stage, mb = divmod(pair, index.microbatches)
    rank = placement[stage]
    if phase == FORWARD:
        message = f"rank {rank}: {stage}F{mb} never runs"
    elif phase == INPUT_GRAD:
        message = (f"rank {rank}: stage {stage} microbatch {mb} has no backward "
                   f"({stage}B{mb}, or {stage}I{mb} then {stage}W{mb})")
    else:
        message = f"rank {rank}: {index.name(by_phase[missing - 1])} runs but {stage}W{mb} never does"
    raise ValidationError(message, pos=missing_pos)


def check_local_routes(
    index: ComputeIndex,
    routes: Sequence[Route],
    *,
    positions: Sequence[Sequence[int]] | None = None,
    locate: Locate = _no_pos,
) -> None:
    """Stages on one rank that feed each other run in data order on that rank."""
    names = _Namer(positions, locate)
    for route in routes:
        if not route.local:
            continue
        p, rank = route.producer, route.rank
        for mb in range(index.microbatches):
            fp = index.forward(p, mb)
            for c in route.consumers:
                fc = index.forward(c, mb)
                if fc < fp:
                    _out_of_order(index, names, rank, fc, fp, "whose output it reads")
            bp = index.backward(p, mb)
            for c in route.grad_consumers:
                bc = index.backward(c, mb)
                if bp < bc:
                    _out_of_order(index, names, rank, bp, bc, "whose gradient it needs")


def _out_of_order(index: ComputeIndex, names: _Namer, rank: int, early: int, late: int, why: str):
    pos_of = index.pos_of
    raise ValidationError(
        f"{names.at(rank, pos_of[early])}: {index.name(early)} comes before {index.name(late)} "
        f"(at {names.other(rank, pos_of[late])}), {why}",
        pos=names.locate(rank, pos_of[early]))


def index_order(order: ComputeOrder, routes: Sequence[Route] = (), *,
                missing_pos: SourcePos | None = None) -> ComputeIndex:
    """Check and index a compute order; messages carry the schedule file's positions."""
    rows = [[(a.kind, a.stage, a.mb, tuple((p.kind, p.stage, p.mb) for p in a.parts))
             for a in row] for row in order.compute]
    index = index_compute(rows, placement=order.placement, microbatches=order.microbatches,
                          locate=order.origin, missing_pos=missing_pos)
    check_local_routes(index, routes, locate=order.origin)
    return index


def check_order(order: ComputeOrder, *, missing_pos: SourcePos | None = None) -> None:
    """Raise ValidationError for the first problem of `order` (positioned where known)."""
    index_order(order, missing_pos=missing_pos)

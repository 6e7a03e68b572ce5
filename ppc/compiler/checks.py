"""Checks of a compute order that need no timing: completeness and local order.

`index_compute` is shared by lowering (on a ComputeOrder) and by the simulator's
validation (on the compute instructions of a Program), so both report the same
precise one-line messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ppc.compiler.routes import Route
from ppc.errors import SourcePos, ValidationError

KIND_CODE = {"F": 0, "B": 1, "I": 2, "W": 3}
KINDS = "FBIW"

Row = Sequence[tuple[str, int, int]]
"""One rank's compute ops as (kind, stage, mb), in program order."""


@dataclass(slots=True, kw_only=True)
class ComputeIndex:
    """Where each compute op runs: flat arrays indexed by `slot(kind, stage, mb)`.

    Global op id g = offset[rank] + position in the rank's compute row.
    """

    stages: int
    microbatches: int
    offset: list[int]
    gid: list[int]
    """gid[slot] = global op id, or -1 when the op is absent."""
    rank_of: list[int]
    """rank_of[g]."""
    pos_of: list[int]
    """pos_of[g] = position in the rank's compute row."""
    ops: list[tuple[str, int, int]]
    """ops[g] = (kind, stage, mb)."""

    def slot(self, kind: str, stage: int, mb: int) -> int:
        return (stage * self.microbatches + mb) * 4 + KIND_CODE[kind]

    def find(self, kind: str, stage: int, mb: int) -> int:
        return self.gid[(stage * self.microbatches + mb) * 4 + KIND_CODE[kind]]

    def backward(self, stage: int, mb: int) -> int:
        """The op that makes input gradients of (stage, mb): its B, else its I."""
        base = (stage * self.microbatches + mb) * 4
        g = self.gid[base + 1]
        return g if g >= 0 else self.gid[base + 2]

    def last_backward(self, stage: int, mb: int) -> int:
        """The op after which (stage, mb)'s activations are freed: B, else W."""
        base = (stage * self.microbatches + mb) * 4
        g = self.gid[base + 1]
        return g if g >= 0 else self.gid[base + 3]

    def column(self, kind: str, stage: int) -> list[int]:
        """Global ids of `kind` on `stage` for microbatches 0..M-1 (-1 where absent)."""
        base = stage * self.microbatches * 4
        return self.gid[base + KIND_CODE[kind] : base + self.microbatches * 4 : 4]

    def backward_column(self, stage: int) -> list[int]:
        """backward(stage, mb) for every mb."""
        return [b if b >= 0 else i for b, i in zip(self.column("B", stage), self.column("I", stage))]

    def name(self, g: int) -> str:
        kind, stage, mb = self.ops[g]
        return f"{stage}{kind}{mb}"


Locate = Callable[[int, int], "SourcePos | None"]


def _no_pos(rank: int, index: int) -> SourcePos | None:
    return None


def index_compute(
    rows: Sequence[Row],
    *,
    placement: Sequence[int],
    microbatches: int,
    positions: Sequence[Sequence[int]] | None = None,
    locate: Locate = _no_pos,
) -> ComputeIndex:
    """Index the ops and check each runs once, on its stage's rank, in range.

    `positions[r][i]` is how to name op i of rank r in messages (default i); `locate`
    gives its source position if known. Raises ValidationError.
    """
    stages = len(placement)
    size = stages * microbatches * 4
    gid = [-1] * size
    rank_of: list[int] = []
    pos_of: list[int] = []
    ops: list[tuple[str, int, int]] = []
    offset: list[int] = []

    code = KIND_CODE
    for rank, row in enumerate(rows):
        base = len(ops)
        offset.append(base)
        row = list(row)
        own = {s for s, r in enumerate(placement) if r == rank}
        if row and (
            not {s for _, s, _ in row} <= own
            or min(mb for _, _, mb in row) < 0
            or max(mb for _, _, mb in row) >= microbatches
        ):
            _explain_misplaced(rank, row, placement, microbatches, positions, locate)
        slots = [(stage * microbatches + mb) * 4 + code[kind] for kind, stage, mb in row]
        for i, slot in enumerate(slots):
            if gid[slot] >= 0:
                first = pos_of[gid[slot]]
                kind, stage, mb = row[i]
                raise ValidationError(
                    f"duplicate op {stage}{kind}{mb}: rank {rank} runs it at positions "
                    f"{positions[rank][first] if positions else first} and "
                    f"{positions[rank][i] if positions else i}",
                    pos=locate(rank, i),
                )
            gid[slot] = base + i
            pos_of.append(i)
        rank_of.extend([rank] * len(row))
        ops.extend(row)
    index = ComputeIndex(
        stages=stages, microbatches=microbatches, offset=offset, gid=gid,
        rank_of=rank_of, pos_of=pos_of, ops=ops,
    )
    _check_complete(index, placement, positions, locate)
    return index


def _explain_misplaced(rank, row, placement, microbatches, positions, locate) -> None:
    """Raise the message for the first op out of range or on the wrong rank."""
    stages = len(placement)
    for i, (kind, stage, mb) in enumerate(row):
        where = f"rank {rank} position {positions[rank][i] if positions else i}"
        name = f"{stage}{kind}{mb}"
        if not 0 <= stage < stages:
            raise ValidationError(
                f"{where}: {name} names stage {stage}, but there are {stages} stages",
                pos=locate(rank, i),
            )
        if not 0 <= mb < microbatches:
            raise ValidationError(
                f"{where}: {name} names microbatch {mb}, but there are {microbatches} microbatches",
                pos=locate(rank, i),
            )
        if placement[stage] != rank:
            raise ValidationError(
                f"{where}: {name} runs on rank {rank}, but stage {stage} is placed "
                f"on rank {placement[stage]}",
                pos=locate(rank, i),
            )


def _check_complete(
    index: ComputeIndex,
    placement: Sequence[int],
    positions: Sequence[Sequence[int]] | None,
    locate: Locate,
) -> None:
    """Each (stage, mb) has F and either B or I + W, in the order F, then B or I, then W."""
    gid, pos_of = index.gid, index.pos_of

    def at(g: int) -> str:
        rank, i = index.rank_of[g], pos_of[g]
        return f"position {positions[rank][i] if positions else i}"

    for stage in range(index.stages):
        rank = placement[stage]
        for mb in range(index.microbatches):
            base = (stage * index.microbatches + mb) * 4
            f, b, i, w = gid[base], gid[base + 1], gid[base + 2], gid[base + 3]
            if f < 0:
                raise ValidationError(f"missing op {stage}F{mb}: rank {rank} never runs it")
            if b >= 0 and (i >= 0 or w >= 0):
                other = i if i >= 0 else w
                raise ValidationError(
                    f"rank {rank} runs both {stage}B{mb} and {index.name(other)}: a backward is "
                    "either B or I then W",
                    pos=locate(rank, pos_of[other]),
                )
            if b < 0 and i < 0 and w < 0:
                raise ValidationError(
                    f"missing op {stage}B{mb}: rank {rank} never runs the backward of stage "
                    f"{stage} for microbatch {mb} (B, or I then W)"
                )
            if b < 0 and (i < 0 or w < 0):
                name, there = (f"{stage}W{mb}", i) if w < 0 else (f"{stage}I{mb}", w)
                raise ValidationError(
                    f"missing op {name}: rank {rank} runs {index.name(there)} without it"
                )
            first_back = b if b >= 0 else i
            if first_back < f:
                raise ValidationError(
                    f"backward before forward: rank {rank} runs {index.name(first_back)} at "
                    f"{at(first_back)} before {stage}F{mb} at {at(f)}",
                    pos=locate(rank, pos_of[first_back]),
                )
            if b < 0 and w < i:
                raise ValidationError(
                    f"W before I: rank {rank} runs {stage}W{mb} at {at(w)} before "
                    f"{stage}I{mb} at {at(i)}",
                    pos=locate(rank, pos_of[w]),
                )


def check_local_routes(
    index: ComputeIndex,
    routes: Sequence[Route],
    *,
    positions: Sequence[Sequence[int]] | None = None,
    locate: Locate = _no_pos,
) -> None:
    """Stages on one rank that feed each other run in data order on that rank."""
    pos_of = index.pos_of

    def at(g: int) -> str:
        rank, i = index.rank_of[g], pos_of[g]
        return f"position {positions[rank][i] if positions else i}"

    for route in routes:
        if not route.local:
            continue
        p = route.producer
        for mb in range(index.microbatches):
            fp = index.find("F", p, mb)
            for c in route.consumers:
                fc = index.find("F", c, mb)
                if fc < fp:
                    raise ValidationError(
                        f"rank {route.rank} runs {index.name(fc)} at {at(fc)} before "
                        f"{index.name(fp)} at {at(fp)}, whose output it reads",
                        pos=locate(route.rank, pos_of[fc]),
                    )
            bp = index.backward(p, mb)
            for c in route.grad_consumers:
                bc = index.backward(c, mb)
                if bp < bc:
                    raise ValidationError(
                        f"rank {route.rank} runs {index.name(bp)} at {at(bp)} before "
                        f"{index.name(bc)} at {at(bc)}, whose gradient it needs",
                        pos=locate(route.rank, pos_of[bp]),
                    )

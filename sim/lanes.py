"""A timeline's spans as flat arrays per rank, for pictures at any scale.

Drawing and encoding code reads numpy arrays (one per field, one row per instruction)
instead of a Python object per op, so a picture of 262,144 ops costs a few array
passes. A rank runs its instructions in order, so within a lane `start` (and `end`) never
decrease: a binary search finds the ops in a time window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ppc.sim.timeline import Timeline

from ppc.ir import ops

__all__ = ["Lane", "lanes", "measured_lanes", "stage_chunks"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Lane:
    """One rank's instructions of one class (compute, or communication), in program order."""

    rank: int
    start: np.ndarray
    """float64, in the costs' unit."""
    end: np.ndarray
    code: np.ndarray
    """uint8 op code (its row in the op table, ppc.ir.ops)."""
    stage: np.ndarray
    mb: np.ndarray
    peer: np.ndarray
    """int32, -1 where the op has no peer."""
    nbytes: np.ndarray
    """int64 bytes the op moves (0 for compute ops)."""

    def __len__(self) -> int:
        return len(self.start)

    def window(self, lo: float, hi: float) -> slice:
        """The ops that overlap [lo, hi]."""
        first = int(np.searchsorted(self.end, lo, side="left"))
        last = int(np.searchsorted(self.start, hi, side="right"))
        return slice(first, max(first, last))


def lanes(timeline: Timeline, *, comm: bool = False) -> list[Lane]:
    """Per rank, its compute ops, or with `comm` its other instructions (sends, receives,
    collectives, STEP) that take time or move bytes."""
    program = timeline.program
    is_compute = np.frombuffer(ops.Codes.get().is_compute, dtype=np.uint8).astype(bool)
    out = []
    for rank in range(program.ranks):
        base = timeline.offset[rank]
        instrs = program.instructions[rank]
        codes = np.fromiter((i.op.code for i in instrs), dtype=np.uint8, count=len(instrs))
        start = np.asarray(timeline.start[base:base + len(instrs)], dtype=np.float64)
        end = np.asarray(timeline.end[base:base + len(instrs)], dtype=np.float64)
        if not comm:
            keep = np.flatnonzero(is_compute[codes])
            nbytes = np.zeros(len(keep), dtype=np.int64)
        else:
            moved = np.fromiter((i.bytes if i.tensors else 0 for i in instrs), dtype=np.int64,
                                count=len(instrs))
            keep = np.flatnonzero(~is_compute[codes] & ((end > start) | (moved > 0)))
            nbytes = moved[keep]
        picked = [instrs[i] for i in keep.tolist()]
        out.append(Lane(
            rank=rank, start=start[keep], end=end[keep], code=codes[keep],
            stage=np.fromiter((i.stage for i in picked), dtype=np.int32, count=len(picked)),
            mb=np.fromiter((i.mb for i in picked), dtype=np.int32, count=len(picked)),
            peer=np.fromiter((-1 if i.peer is None else i.peer for i in picked), dtype=np.int32,
                             count=len(picked)),
            nbytes=nbytes,
        ))
    return out


def measured_lanes(comparison, ranks: int) -> list[Lane]:
    """The compute slices of a measured step (a compare_trace.Comparison) as lanes, in
    seconds from the step's start."""
    out = []
    for rank in range(ranks):
        pieces = sorted((p for p in comparison.measured_slices if p.rank == rank), key=lambda p: p.start)
        out.append(Lane(
            rank=rank, start=np.array([p.start for p in pieces], dtype=np.float64),
            end=np.array([p.end for p in pieces], dtype=np.float64),
            code=np.array([ops.get(p.kind).code for p in pieces], dtype=np.uint8),
            stage=np.array([p.stage for p in pieces], dtype=np.int32),
            mb=np.array([p.mb for p in pieces], dtype=np.int32),
            peer=np.full(len(pieces), -1, dtype=np.int32), nbytes=np.zeros(len(pieces), dtype=np.int64),
        ))
    return out


def stage_chunks(program) -> np.ndarray:
    """chunk[stage]: the stage's index among its rank's stages (0 for the first), which
    pictures show as a lighter shade when V > 1."""
    chunk = np.zeros(program.stages, dtype=np.int32)
    seen = [0] * program.ranks
    for stage, rank in enumerate(program.placement):
        chunk[stage] = seen[rank]
        seen[rank] += 1
    return chunk

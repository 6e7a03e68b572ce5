"""Peak activation memory per rank.

A microbatch's activations on a stage are alive from its F until its last backward op
there (B, or W when the backward is split). In units, each alive (stage, microbatch)
counts 1. In bytes (when the costs know per-stage activation bytes), F allocates the
stage's bytes, I frees all but the `weight_share` W still needs, and W frees the rest.
Each rank runs its ops in program order, so peaks do not depend on timing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppc.costs import CostModel
from ppc.ir import ops
from ppc.ir.order import ComputeOrder
from ppc.ir.program import Program
from ppc.ir.program import codes as program_codes


@dataclass(frozen=True, slots=True, kw_only=True)
class RankMemory:
    peak_activations: int
    """Most (stage, microbatch) activation sets alive at once."""
    peak_bytes: int | None
    """Peak activation bytes, or None when the costs give no activation sizes."""


def rank_memory(program: Program, costs: CostModel, *, codes: list[int] | None = None) -> tuple[RankMemory, ...]:
    """Peak activations per rank of a program; `codes` (op codes of all instructions,
    rank-major) saves a pass."""
    code = codes if codes is not None else program_codes(i for row in program.instructions for i in row)
    rows, g = [], 0
    for row in program.instructions:
        rows.append(_units(zip(code[g:g + len(row)], row)))
        g += len(row)
    return tuple(_peak(row, costs) for row in rows)


def _units(pairs):
    """(code, stage) of each instruction, an overlapped op as its parts in order."""
    for c, instr in pairs:
        if instr.parts:
            yield from ((p.op.code, p.stage) for p in instr.parts)
        else:
            yield c, instr.stage


def order_memory(order: ComputeOrder, costs: CostModel) -> tuple[RankMemory, ...]:
    """Peak activations per rank of a compute order (communication changes no memory)."""
    return tuple(_peak(((p.kind.code, p.stage) for a in row for p in (a.parts or (a,))), costs)
                 for row in order.compute)


def _peak(row, costs: CostModel) -> RankMemory:
    """Walk one rank's (code, stage) pairs applying each op's memory effect (op table)."""
    sizes = costs.activation_bytes
    memory = ops.Codes.get().memory
    sets = [m.sets for m in memory]
    fraction = [m.whole + m.share * costs.weight_share for m in memory]
    alive = peak = 0
    live = peak_b = 0.0
    for c, stage in row:
        d = sets[c]
        if d:
            alive += d
            if alive > peak:  # noqa: PLR1730 (hot loop)
                peak = alive
        if sizes:
            f = fraction[c]
            if f:
                live += f * sizes[stage]
                if live > peak_b:  # noqa: PLR1730
                    peak_b = live
    return RankMemory(peak_activations=peak, peak_bytes=round(peak_b) if sizes else None)

"""Peak activation memory per rank.

A microbatch's activations on a stage are alive from its F until its last backward op
there (B, or W when the backward is split). In units, each alive (stage, microbatch)
counts 1. In bytes (when the costs know per-stage activation bytes), F allocates the
stage's bytes, I frees all but the `weight_share` W still needs, and W frees the rest.
Each rank runs its ops in program order, so peaks do not depend on timing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppc.compiler import opcodes as opc
from ppc.compiler.instructions import Program
from ppc.costs import CostModel


@dataclass(frozen=True, slots=True, kw_only=True)
class RankMemory:
    peak_activations: int
    """Most (stage, microbatch) activation sets alive at once."""
    peak_bytes: int | None
    """Peak activation bytes, or None when the costs give no activation sizes."""


def rank_memory(program: Program, costs: CostModel, *, codes: list[int] | None = None) -> tuple[RankMemory, ...]:
    """Peak activations per rank; `codes` (opcodes of all instructions, rank-major) saves a pass."""
    code = codes if codes is not None else opc.codes(i for row in program.instructions for i in row)
    sizes = costs.activation_bytes
    keep = costs.weight_share
    result = []
    g = 0
    for row in program.instructions:
        alive = peak = 0
        live = peak_b = 0.0
        for instr in row:
            c = code[g]
            g += 1
            if c == opc.F:
                alive += 1
                if alive > peak:  # noqa: PLR1730 (hot loop)
                    peak = alive
                if sizes:
                    live += sizes[instr.stage]
                    if live > peak_b:  # noqa: PLR1730
                        peak_b = live
            elif c == opc.B:
                alive -= 1
                if sizes:
                    live -= sizes[instr.stage]
            elif c == opc.I:
                if sizes:
                    live -= (1.0 - keep) * sizes[instr.stage]
            elif c == opc.W:
                alive -= 1
                if sizes:
                    live -= keep * sizes[instr.stage]
        result.append(RankMemory(peak_activations=peak, peak_bytes=round(peak_b) if sizes else None))
    return tuple(result)

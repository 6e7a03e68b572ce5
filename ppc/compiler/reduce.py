"""Data-parallel gradient reduction as instructions.

Requires: each rank's instructions (compute and transfers, before the step-level ops)
and the number of pipeline replicas D.
Guarantees: with D > 1, one REDUCE_GRAD per stage right after the last op on its rank
that computes that stage's weight gradients (its last B or W), so the reduction of early
stages overlaps the rank's remaining backward work; with D = 1 nothing changes. Each
carries the stage's gradient bytes (from the stage graph; 0 when unknown).
"""

from __future__ import annotations

from ppc.ir.ops import Op
from ppc.ir.program import Instruction, TensorSpec
from ppc.ir.stage_graph import StageGraph

__all__ = ["add_grad_reductions"]


def add_grad_reductions(rows: list[list[Instruction]], graph: StageGraph, dp: int) -> None:
    """Insert the REDUCE_GRAD instructions into `rows` in place (nothing when dp == 1)."""
    if dp <= 1:
        return
    for row in rows:
        last = _last_weight_grad(row)
        for position, stage in sorted(((p, s) for s, p in last.items()), reverse=True):
            row.insert(position + 1, Instruction(op=Op.REDUCE_GRAD, stage=stage, mb=0,
                                                 tensors=(_grad_spec(graph, stage),)))


def _last_weight_grad(row: list[Instruction]) -> dict[int, int]:
    """Per stage on this row, the position of its last op that computes weight gradients."""
    last: dict[int, int] = {}
    for position, ins in enumerate(row):
        for part in ins.parts or (ins,):
            if "weight_grad" in part.op.phases:
                last[part.stage] = position
    return last


def _grad_spec(graph: StageGraph, stage: int) -> TensorSpec:
    size = graph.param_bytes[stage] if graph.param_bytes else 0
    return TensorSpec(name=f"grads.stage{stage}", shape=(size // 4,), dtype="float32", bytes=size)

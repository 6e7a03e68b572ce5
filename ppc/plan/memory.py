"""Peak memory per rank: weights and optimizer state, plus the activations a compute
order keeps alive.

Activations depend only on each rank's order, not on timing; the simulator's memory
model (ppc.sim.memory, from the op table's memory effects) counts them.
"""

from __future__ import annotations

from ppc.costs import CostModel
from ppc.ir.order import ComputeOrder
from ppc.sim.memory import order_memory


def peak_activation_bytes(order: ComputeOrder, costs: CostModel) -> tuple[int, ...]:
    """Per rank, the largest activation bytes alive at once (0 when costs carry none):
    the simulator's memory model, applied to the compute order."""
    return tuple(m.peak_bytes or 0 for m in order_memory(order, costs))


def weight_bytes(order: ComputeOrder, stage_params: tuple[int, ...], bytes_per_param: float) -> tuple[int, ...]:
    """Per rank, parameters of its stages times bytes per parameter (weights, grads, optimizer)."""
    if not stage_params:
        return (0,) * order.ranks
    return tuple(
        int(sum(stage_params[s] for s in order.stages_of(rank)) * bytes_per_param) for rank in range(order.ranks)
    )

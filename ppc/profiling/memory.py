"""Peak memory per rank: weights and optimizer state, plus the activations a compute
order keeps alive.

Activations depend only on each rank's order, not on timing: F of (stage, mb) adds the
stage's activation bytes; B frees them; I frees all but `weight_share` of them, which
the W of the same (stage, mb) frees.
"""

from __future__ import annotations

from ppc.actions import ComputeOrder, Kind
from ppc.costs import CostModel


def peak_activation_bytes(order: ComputeOrder, costs: CostModel) -> tuple[int, ...]:
    """Per rank, the largest activation bytes alive at once (0 when costs carry none)."""
    if not costs.activation_bytes:
        return (0,) * order.ranks
    acts = costs.activation_bytes
    peaks = []
    for row in order.compute:
        live = peak = 0.0
        for action in row:
            size = acts[action.stage]
            if action.kind is Kind.F:
                live += size
            elif action.kind is Kind.B:
                live -= size
            elif action.kind is Kind.I:
                live -= size * (1 - costs.weight_share)
            else:
                live -= size * costs.weight_share
            peak = max(peak, live)
        peaks.append(round(peak))
    return tuple(peaks)


def weight_bytes(order: ComputeOrder, stage_params: tuple[int, ...], bytes_per_param: float) -> tuple[int, ...]:
    """Per rank, parameters of its stages times bytes per parameter (weights, grads, optimizer)."""
    if not stage_params:
        return (0,) * order.ranks
    return tuple(
        int(sum(stage_params[s] for s in order.stages_of(rank)) * bytes_per_param) for rank in range(order.ranks)
    )

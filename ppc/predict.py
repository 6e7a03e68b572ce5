"""Compile and simulate: the one path from a compute order and costs to a timeline.

`ppc simulate`, `ppc plan`, host calibration and schedule search all predict a step
here, so a figure one command prints is the figure the others print for the same order
and costs. A costs file that is a profile (per-layer costs, a split, or per-stage output
bytes) gives the stage chain whose transfers carry those bytes
(ppc.plan.cost_profile.costs_and_graph). With `dp` > 1 pipeline replicas each stage's
gradients are reduced across them (REDUCE_GRAD), timed as collectives: the stage graph's
gradient bytes, else the costs' `param_bytes`, else 0.
"""

from __future__ import annotations

import dataclasses

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.ir.order import ComputeOrder
from ppc.ir.stage_graph import StageGraph, synthetic_chain
from ppc.sim.timeline import Timeline, simulate
from ppc.verify.program import check

__all__ = ["simulate_order"]


def simulate_order(order: ComputeOrder, costs: CostModel, graph: StageGraph | None = None, *,
                   dp: int = 1, zero: int = 0) -> Timeline:
    """Lower `order` (placing transfers with these costs), validate it once and time it,
    with its gradient reductions across `dp` replicas (ZeRO-1 with `zero=1`)."""
    if dp > 1:
        graph = with_grad_bytes(graph or synthetic_chain(order.stages), costs)
    program = lower(order, graph, costs=costs, dp=dp)
    return simulate(program, costs, graph=graph, checked=check(program, graph), dp=dp, zero=zero)


def with_grad_bytes(graph: StageGraph, costs: CostModel) -> StageGraph:
    """`graph`, its gradient bytes per stage filled from the costs' `param_bytes` when it
    has none."""
    if graph.param_bytes or not costs.param_bytes:
        return graph
    return dataclasses.replace(graph, param_bytes=tuple(costs.param_bytes))

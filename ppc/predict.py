"""Compile and simulate: the one path from a compute order and costs to a timeline.

`ppc simulate`, `ppc plan`, host calibration and schedule search all predict a step
here, so a figure one command prints is the figure the others print for the same order
and costs. A costs file that is a profile (per-layer costs, a split, or per-stage output
bytes) gives the stage chain whose transfers carry those bytes
(ppc.plan.cost_profile.costs_and_graph).
"""

from __future__ import annotations

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.ir.order import ComputeOrder
from ppc.ir.stage_graph import StageGraph
from ppc.sim.timeline import Timeline, simulate
from ppc.verify.program import check

__all__ = ["simulate_order"]


def simulate_order(order: ComputeOrder, costs: CostModel, graph: StageGraph | None = None) -> Timeline:
    """Lower `order` (placing transfers with these costs), validate it once and time it."""
    program = lower(order, graph, costs=costs)
    return simulate(program, costs, graph=graph, checked=check(program, graph))

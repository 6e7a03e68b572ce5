"""Compile and simulate: the one path from a compute order and costs to a timeline.

`ppc simulate`, `ppc plan`, host calibration and schedule search all predict a step
here, so a figure one command prints is the figure the others print for the same order
and costs. A costs file that is a profile (per-layer costs, a split, or per-stage output
bytes) also gives the stage chain whose transfers carry those bytes.
"""

from __future__ import annotations

from pathlib import Path

from ppc.compiler.lower import lower
from ppc.costs import CostModel, read_costs_json
from ppc.ir.order import ComputeOrder
from ppc.ir.stage_graph import StageGraph
from ppc.sim.timeline import Timeline, simulate
from ppc.verify.program import check

__all__ = ["costs_and_graph", "simulate_order"]

_PROFILE_KEYS = ("layers", "split", "stage_output_bytes")


def simulate_order(order: ComputeOrder, costs: CostModel, graph: StageGraph | None = None) -> Timeline:
    """Lower `order` (placing transfers with these costs), validate it once and time it."""
    program = lower(order, graph, costs=costs)
    return simulate(program, costs, graph=graph, checked=check(program, graph))


def costs_and_graph(spec: str | None, stages: int) -> tuple[CostModel, StageGraph | None]:
    """The costs `spec` names (a JSON file, inline `F=1,...`, or None for unit costs) and,
    for a profile file, the chain graph with its stages' transfer bytes."""
    if spec is None or not (spec.endswith(".json") or Path(spec).is_file()):
        return CostModel.load(spec, stages), None
    data = read_costs_json(spec)
    if not isinstance(data, dict) or not any(key in data for key in _PROFILE_KEYS):
        return CostModel.load(spec, stages), None
    from ppc.plan.cost_profile import CostProfile

    own = CostProfile.from_dict(data, source=spec).own_split()
    if own.costs.stages != stages:
        return CostModel.load(spec, stages), None  # CostModel names the mismatch
    return own.costs, own.stage_graph()

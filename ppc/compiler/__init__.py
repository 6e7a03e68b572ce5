"""The compiler: compute orders + stage graph -> per-rank instruction lists.

`compile_program` reads as its list of passes: lower (which checks the compute order
and times it to place communication), then validate the program it produced, so that
nothing invalid is ever emitted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ppc.costs import CostModel
    from ppc.ir.order import ComputeOrder
    from ppc.ir.program import Program
    from ppc.ir.stage_graph import StageGraph

__all__ = ["compile_program"]


def compile_program(
    order: ComputeOrder, graph: StageGraph | None = None, *, costs: CostModel | None = None,
    dp: int = 1,
) -> Program:
    """Lower `order` and validate the result; raises ValidationError / DeadlockError."""
    from ppc.compiler.lower import lower
    from ppc.verify.program import validate

    program = lower(order, graph, costs=costs, dp=dp)
    validate(program, graph)
    return program

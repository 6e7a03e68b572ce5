"""The colour of every op kind in every picture: PNG/SVG (ppc.sim.plot), the HTML
timeline (ppc.sim.html) and the terminal Gantt (ppc.sim.gantt), read from the op table
(ppc.ir.ops), so a new op kind brings its colour."""

from __future__ import annotations

from ppc.ir import ops

__all__ = ["colors"]


def colors() -> dict[str, str]:
    """Colour of each op kind by name, in table order (op code order)."""
    return {k.name: k.colour for k in ops.table()}

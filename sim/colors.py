"""The color of every op kind, in every picture: PNG/SVG (ppc.sim.plot), the HTML
timeline (ppc.sim.html) and the terminal Gantt (ppc.sim.gantt). One dict, keyed by the
op's letter or name, so it can move into the op table."""

from __future__ import annotations

__all__ = ["COLORS"]

COLORS = {
    "F": "#4c9be8", "B": "#b565c9", "I": "#e8b04c", "W": "#5cb85c",
    "SEND_F": "#7f8c8d", "RECV_F": "#bdc3c7", "SEND_B": "#5d6d7e", "RECV_B": "#aab7b8",
    "REDUCE_TIED": "#d9534f", "STEP": "#34495e",
}

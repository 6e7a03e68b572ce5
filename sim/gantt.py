"""A terminal Gantt chart of a timeline, as a rich Text (the CLI prints it)."""

from __future__ import annotations

import math

from ppc.sim.timeline import Timeline
from rich.text import Text

from ppc.ir import ops

IDLE = "·"


def styles() -> dict[str, str]:
    """The pictures' colour of each compute kind (op table), as rich styles."""
    return {name: f"black on {colour}" for name, colour in ops.colours().items()}


def _network_row(out: Text, timeline: Timeline, rank: int, label: int, cells: int, step: float) -> None:
    """With data parallelism, a row under the rank for its network: `R` where its
    gradient reductions run (beside its compute)."""
    if timeline.dp <= 1:
        return
    busy = [False] * cells
    base = timeline.offset[rank]
    for i, instr in enumerate(timeline.program.instructions[rank]):
        start, end = timeline.start[base + i], timeline.end[base + i]
        if instr.op.category is not ops.Category.REDUCE or end <= start:
            continue
        for c in range(min(int(start / step), cells - 1), min(int(end / step - 1e-9), cells - 1) + 1):
            busy[c] = True
    style = f"black on {ops.get('REDUCE_GRAD').colour}"
    out.append("  net".ljust(label) + " ")
    for c in range(cells):
        out.append("R" if busy[c] else " ", style=style if busy[c] else "")
    out.append("\n")


def gantt(timeline: Timeline, *, width: int = 100) -> Text:
    """One row per rank; each cell shows the compute op that covers most of its time.

    When a cell is at most one time unit wide and an op starts in it, the cell shows
    the op's microbatch (last digit) instead of its kind. Ops with a non-finite start or
    end (a timeline that overflowed) are left out rather than drawn.
    """
    program = timeline.program
    style_of = styles()
    span = timeline.makespan if 0 < timeline.makespan < math.inf else 1.0
    cells = max(10, min(width, 10_000))
    step = span / cells
    out = Text()
    label = len(f"rank {program.ranks - 1}")
    for rank in range(program.ranks):
        cover = [0.0] * cells
        kind = [""] * cells
        mark = [""] * cells
        base = timeline.offset[rank]
        for i, instr in enumerate(program.instructions[rank]):
            if not instr.op.is_compute:
                continue
            start, end = timeline.start[base + i], timeline.end[base + i]
            if not (math.isfinite(start) and math.isfinite(end)):
                continue
            first = min(int(start / step), cells - 1)
            last = min(int(end / step - 1e-9), cells - 1)
            for c in range(first, last + 1):
                lo, hi = max(start, c * step), min(end, (c + 1) * step)
                if hi - lo > cover[c]:
                    cover[c], kind[c] = hi - lo, instr.op.value
            if not mark[first] and end - start >= step:
                mark[first] = str(instr.mb % 10)
        out.append(f"rank {rank}".ljust(label) + " ")
        for c in range(cells):
            if kind[c]:
                out.append(mark[c] or kind[c], style=style_of[kind[c]])
            else:
                out.append(IDLE, style="dim")
        out.append("\n")
        _network_row(out, timeline, rank, label, cells, step)
    out.append(" " * (label + 1))
    for k, style in style_of.items():
        out.append(f" {k} ", style=style)
        out.append(" ")
    if timeline.dp > 1:
        reduce = ops.get("REDUCE_GRAD")
        out.append(f" {reduce.name} ", style=f"black on {reduce.colour}")
        out.append(" ")
    out.append(f"  {IDLE} idle   makespan {timeline.makespan:g} {timeline.costs.unit}\n")
    return out

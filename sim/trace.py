"""Chrome / Perfetto trace of a timeline (open in chrome://tracing or ui.perfetto.dev)."""

from __future__ import annotations

import json
from pathlib import Path

from ppc.sim.timeline import Timeline

_US_PER_UNIT = {"s": 1e6, "ms": 1e3, "us": 1.0}


def trace_events(timeline: Timeline) -> dict:
    """Trace JSON: one thread per rank, compute ops and waited receives as slices."""
    scale = _US_PER_UNIT.get(timeline.costs.unit, 1e3)
    program = timeline.program
    events = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": program.schedule}}]
    for rank in range(program.ranks):
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": rank, "args": {"name": f"rank {rank}"}})
        base = timeline.offset[rank]
        for i, instr in enumerate(program.instructions[rank]):
            start, end = timeline.start[base + i], timeline.end[base + i]
            if not instr.op.is_compute and end <= start:
                continue
            events.append({
                "name": str(instr),
                "cat": instr.op.value,
                "ph": "X",
                "pid": 0,
                "tid": rank,
                "ts": start * scale,
                "dur": (end - start) * scale,
                "args": {"stage": instr.stage, "microbatch": instr.mb, "peer": instr.peer},
            })
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(timeline: Timeline, path: str | Path) -> None:
    Path(path).write_text(json.dumps(trace_events(timeline)))

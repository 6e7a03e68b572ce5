"""Chrome / Perfetto trace of a timeline (open in ui.perfetto.dev or chrome://tracing).

One convention for every ppc trace, simulated or measured, so they overlay:

- `pid` is the rank; its process is named `rank R` (sorted by rank);
- `tid` says where the slices come from: 0 for a run (`ppc run --trace`,
  ppc.exec.trace), 1 (`PREDICTED_TID`) for the simulator;
- `ts` and `dur` in microseconds from the step's start; slices are named like
  instructions (`2F0`, `1RECV_B3`), `cat` is the op kind, `args` carry `rank` and `step`
  (and here `stage`, `microbatch`, `peer`, `bytes`).

`trace_events(timeline, measured=events)` puts a measured step (run-trace events, e.g.
the step `ppc.plan.compare_trace` compares) beside the prediction in one trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ppc.sim.timeline import Timeline

__all__ = ["PREDICTED_TID", "RUN_TID", "trace_events", "write_trace"]

RUN_TID = 0
"""Thread of a run's slices in each rank's process (ppc.exec.trace)."""
PREDICTED_TID = 1
"""Thread of the simulator's slices in each rank's process."""

_US_PER_UNIT = {"s": 1e6, "ms": 1e3, "us": 1.0}


def trace_events(timeline: Timeline, *, measured: Iterable[dict] | None = None) -> dict:
    """Trace JSON: per rank a process, the predicted compute ops and the communication that
    takes time on its `PREDICTED_TID` thread; `measured` events (of one step) on `RUN_TID`,
    moved to start at 0."""
    scale = _US_PER_UNIT.get(timeline.costs.unit, 1e3)
    program = timeline.program
    events = []
    for rank in range(program.ranks):
        events += _names(rank, PREDICTED_TID, f"predicted: {program.schedule}")
        base = timeline.offset[rank]
        for i, instr in enumerate(program.instructions[rank]):
            start, end = timeline.start[base + i], timeline.end[base + i]
            if not instr.op.is_compute and end <= start:
                continue
            args = {"rank": rank, "step": 0, "stage": instr.stage, "microbatch": instr.mb}
            if not instr.op.is_compute:
                args |= {"peer": instr.peer, "bytes": instr.bytes}
            events.append({"name": str(instr), "cat": instr.op.value, "ph": "X", "pid": rank,
                           "tid": PREDICTED_TID, "ts": start * scale, "dur": (end - start) * scale,
                           "args": args})
    if measured is not None:
        events += _measured(list(measured))
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(timeline: Timeline, path: str | Path, *, measured: Iterable[dict] | None = None) -> None:
    Path(path).write_text(json.dumps(trace_events(timeline, measured=measured)))


def _names(rank: int, tid: int, thread: str) -> list[dict]:
    return [
        {"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}},
        {"name": "process_sort_index", "ph": "M", "pid": rank, "args": {"sort_index": rank}},
        {"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": thread}},
    ]


def _measured(events: list[dict]) -> list[dict]:
    slices = [e for e in events if e.get("ph") == "X"]
    origin = min((float(e["ts"]) for e in slices), default=0.0)
    out = []
    for rank in sorted({_rank(e) for e in slices}):
        out += _names(rank, RUN_TID, "run")[2:]
    for event in slices:
        out.append({**event, "pid": _rank(event), "tid": RUN_TID, "ts": float(event["ts"]) - origin})
    return out


def _rank(event: dict) -> int:
    return int(event.get("args", {}).get("rank", event.get("pid", 0)))

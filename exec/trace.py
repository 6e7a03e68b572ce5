"""Chrome trace of executed instructions: one process row per rank, one slice per op.

Every rank writes its slices to FILE.rank-R.json next to FILE; rank 0 merges them
into FILE after a barrier (open it in chrome://tracing or Perfetto). Each slice carries
`args.rank` and `args.step` (0-based: a rank's slices up to and including its STEP
instruction belong to that step), which `ppc simulate --against` reads, and `args.cpu_ms`,
the CPU time the rank's thread spent in the slice (less than its length when the rank
waited, or shared a core), which `ppc profile --ranks` reads. `rank` is the pipeline rank
and `group` the pipeline's process group (None: the default group); with several
replicas only replica 0 writes a trace.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

__all__ = ["write_trace"]


def write_trace(path: str, *, rank: int, records: list[tuple[str, float, float, float]], group=None) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    events = [
        {
            "name": name,
            "cat": name.split()[0].lstrip("0123456789").rstrip("0123456789<>"),
            "ph": "X",
            "pid": rank,
            "tid": 0,
            "ts": start * 1e6,
            "dur": (end - start) * 1e6,
            "args": {"rank": rank, "step": step, "cpu_ms": round(cpu * 1e3, 4)},
        }
        for (name, start, end, cpu), step in zip(records, _steps(records))
    ]
    events.append({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}})
    part = target.with_name(f"{target.name}.rank-{rank}.json")
    part.write_text(json.dumps(events))
    if dist.is_initialized():
        dist.barrier(group=group)
    if rank != 0:
        return
    merged = []
    for r in range(dist.get_world_size(group) if dist.is_initialized() else 1):
        piece = target.with_name(f"{target.name}.rank-{r}.json")
        merged.extend(json.loads(piece.read_text()))
        piece.unlink()
    origin = min((e["ts"] for e in merged if "ts" in e), default=0.0)
    for event in merged:
        if "ts" in event:
            event["ts"] -= origin
    target.write_text(json.dumps({"traceEvents": merged, "displayTimeUnit": "ms"}))


def _steps(records: list[tuple[str, float, float, float]]) -> list[int]:
    """The step of each record: the number of STEP instructions recorded before it."""
    out, step = [], 0
    for name, *_ in records:
        out.append(step)
        if "STEP" in name:
            step += 1
    return out

"""Predicted against measured: a simulated Timeline beside an executor trace.

The trace is a Chrome/Perfetto JSON (`ppc run --trace FILE.json`): complete events
(`"ph": "X"`, `ts` and `dur` in microseconds), one process (`pid`) per rank unless an
event's `args.rank` says otherwise. Compute events are named like instructions
(`2F0`, `1I3`); anything else (sends, receives, waits) counts as not busy. When events
carry `args.step` (or else, per rank, by the STEP events before them), the step with
the median makespan (after the first, a warm-up) is compared.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from ppc.errors import CostError, ScheduleError
from ppc.inputs import read_text
from ppc.ir.order import Action


def compute_slice(name: str) -> tuple[int, str, int] | None:
    """(stage, kind, microbatch) of a compute slice's name (`2F0`, `1I3`, `(0F1;3B0)OVERLAP_F_B`:
    any compute row of the op table), else None."""
    try:
        action = Action.parse(name)
    except ScheduleError:
        return None
    return action.stage, action.kind.name, action.mb


@dataclass(frozen=True, slots=True, kw_only=True)
class RankSide:
    busy: float
    idle: float
    bubble: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasuredSlice:
    """One compute op of the compared step, in seconds from the step's start."""

    rank: int
    stage: int
    kind: str
    mb: int
    start: float
    end: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """Per rank, predicted and measured busy/idle/bubble; both makespans (seconds)."""

    predicted: tuple[RankSide, ...]
    measured: tuple[RankSide, ...]
    predicted_makespan: float
    measured_makespan: float
    measured_slices: tuple[MeasuredSlice, ...] = ()
    """Compute slices of the compared step."""

    @property
    def error(self) -> float:
        """(predicted - measured) / measured step time."""
        return (self.predicted_makespan - self.measured_makespan) / self.measured_makespan


def load_trace(path: str | Path) -> list[dict]:
    text = read_text(path, error=CostError, what="trace file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CostError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except (RecursionError, ValueError) as exc:
        raise CostError(f"{path}: not a trace: {type(exc).__name__}") from None
    events = data.get("traceEvents", []) if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise CostError(f"{path}: not a trace: expected a list of events or {{\"traceEvents\": [...]}}")
    slices = [e for e in events if isinstance(e, dict) and e.get("ph") == "X"]
    for index, event in enumerate(slices):
        _check_slice(event, f"{path}: slice {index}")
    return slices


def _check_slice(event: dict, where: str) -> None:
    """The fields the comparison reads: finite ts and dur, integer pid/rank/step."""
    for key in ("ts", "dur"):
        value = event.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CostError(f"{where}: {key!r} must be a finite number, got {str(value)[:40]!r}")
    args = event.get("args", {})
    if not isinstance(args, dict):
        raise CostError(f"{where}: 'args' must be an object")
    for key, value in (("pid", event.get("pid", 0)), ("rank", args.get("rank", 0)), ("step", args.get("step", 0))):
        if isinstance(value, bool) or not isinstance(value, int):
            raise CostError(f"{where}: {key!r} must be an integer, got {str(value)[:40]!r}")


def compared_step(events: list[dict]) -> list[dict]:
    """The events of the step with the median span (the first, a warm-up, left out when
    there are more than two)."""
    steps: dict[int, list[dict]] = {}
    for event, step in zip(events, _step_numbers(events)):
        steps.setdefault(step, []).append(event)
    if not steps:
        raise CostError("trace has no complete ('ph': 'X') events")
    spans = {k: _span(v) for k, v in steps.items()}
    keys = sorted(steps)[1:] if len(steps) > 2 else sorted(steps)
    median = statistics.median_low(spans[k] for k in keys)
    return steps[next(k for k in keys if spans[k] == median)]


def compute_slices(step: list[dict], ranks: int) -> list[MeasuredSlice]:
    """A step's compute events, in seconds from the step's start."""
    origin = min(e["ts"] for e in step)
    out = []
    for event in step:
        rank = int(event.get("args", {}).get("rank", event.get("pid", 0)))
        match = compute_slice(str(event.get("name", "")).strip())
        if 0 <= rank < ranks and match:
            start = (float(event["ts"]) - origin) / 1e6
            stage, kind, mb = match
            out.append(MeasuredSlice(rank=rank, stage=stage, kind=kind, mb=mb, start=start,
                                     end=start + float(event["dur"]) / 1e6))
    return out


def compare(timeline, events: list[dict]) -> Comparison:
    """Lay a ppc.sim Timeline beside the measured events of one step."""
    ranks = len(timeline.per_rank)
    step = compared_step(events)
    slices = compute_slices(step, ranks)
    makespan = _span(step) / 1e6
    busy = [0.0] * ranks
    for piece in slices:
        busy[piece.rank] += piece.end - piece.start
    predicted = tuple(RankSide(busy=s.busy, idle=s.idle, bubble=s.bubble) for s in timeline.per_rank)
    return Comparison(predicted=predicted, measured=tuple(_side(b, makespan) for b in busy),
                      predicted_makespan=float(timeline.makespan), measured_makespan=makespan,
                      measured_slices=tuple(slices))


def _step_numbers(events: list[dict]) -> list[int]:
    """Each event's step: `args.step`, or else the count of STEP events its rank ran before it."""
    if any("step" in e.get("args", {}) for e in events):
        return [int(e.get("args", {}).get("step", 0)) for e in events]
    seen: dict[int, int] = {}
    out = []
    for event in sorted(events, key=lambda e: e["ts"]):
        rank = int(event.get("args", {}).get("rank", event.get("pid", 0)))
        out.append((id(event), seen.get(rank, 0)))
        if "STEP" in str(event.get("name", "")):
            seen[rank] = seen.get(rank, 0) + 1
    by_id = dict(out)
    return [by_id[id(e)] for e in events]


def _span(events: list[dict]) -> float:
    return max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)


def _side(busy: float, makespan: float) -> RankSide:
    idle = max(makespan - busy, 0.0)
    return RankSide(busy=busy, idle=idle, bubble=idle / makespan if makespan > 0 else 0.0)


def render_rows(comparison: Comparison) -> list[tuple[str, ...]]:
    """Table rows for a CLI: rank, predicted busy/idle/bubble, measured busy/idle/bubble."""
    rows = []
    for rank, (p, m) in enumerate(zip(comparison.predicted, comparison.measured)):
        rows.append((str(rank), f"{p.busy:.4g}", f"{p.idle:.4g}", f"{p.bubble:.1%}",
                     f"{m.busy:.4g}", f"{m.idle:.4g}", f"{m.bubble:.1%}"))
    return rows

"""The schema of costs JSON and of inline `--costs`: every key known, every value checked.

A costs document is walked once against SCHEMA before anything reads it. Each failure
is one CostError naming the source and the path of the bad field (`costs.json: F[2]:
...`); an unknown key names the closest known one. Times are bounded by MAX_TIME so
that no sum over a step can overflow to inf.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

from ppc.errors import CostError

__all__ = ["MAX_TIME", "check_costs", "closest_key"]

MAX_TIME = 1e15
"""Largest time of one op, message or step, in any unit (1e15 ns is 11 days)."""
MAX_BYTES = 1e18
MAX_COUNT = 1e15
MIN_BANDWIDTH = 1e-3
"""Bytes per time unit; below it one message could take longer than MAX_TIME allows."""

_ALIASES = {
    "forward": "F", "backward": "B", "backward_input": "I", "backward_weight": "W",
    "optimizer": "step", "optimizer_step": "step", "activations": "activation_bytes",
}

Check = Callable[[object, str, "int | None"], None]


class _Bad(Exception):
    """A problem at a path; check_costs turns it into one CostError line."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}" if path else problem)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else f"a list of {len(value)}"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(low: float, high: float, *, what: str = "a number", low_open: bool = False,
            integer: bool = False, allow_inf: bool = False) -> Check:
    def check(value: object, path: str, stages: int | None) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(path, f"must be {what}, got {_show(value)}")
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise _Bad(path, f"must be a finite number, got {value}")
        if value < low or (low_open and value == low):
            raise _Bad(path, f"must be {'>' if low_open else '>='} {low:g}, got {value:g}")
        if value > high and not (allow_inf and math.isinf(value)):
            raise _Bad(path, f"{value:g} is above the largest allowed, {high:g}")
        if integer and value != int(value):
            raise _Bad(path, f"must be a whole number, got {value:g}")

    return check


def _per_stage(item: Check, *, empty_ok: bool = False) -> Check:
    """A number for every stage, or a list with one per stage (or none, when `empty_ok`)."""

    def check(value: object, path: str, stages: int | None) -> None:
        if not isinstance(value, list):
            item(value, path, stages)
            return
        if stages is not None and len(value) != stages and not (empty_ok and not value):
            raise _Bad(path, f"needs a number or {stages} values (one per stage), got {len(value)}")
        for i, v in enumerate(value):
            item(v, f"{path}[{i}]", stages)

    return check


def _list_of(item: Check) -> Check:
    def check(value: object, path: str, stages: int | None) -> None:
        if not isinstance(value, list):
            raise _Bad(path, f"must be a list, got {_show(value)}")
        for i, v in enumerate(value):
            item(v, f"{path}[{i}]", stages)

    return check


def _object(fields: dict[str, Check]) -> Check:
    def check(value: object, path: str, stages: int | None) -> None:
        if not isinstance(value, dict):
            raise _Bad(path, f"must be an object {{...}}, got {_show(value)}")
        for key, v in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in fields:
                hint = closest_key(str(key), fields)
                raise _Bad(path, f"unknown key {str(key)!r}{hint}")
            fields[key](v, where, stages)

    return check


def _string(value: object, path: str, stages: int | None) -> None:
    if not isinstance(value, str) or len(value) > 64:
        raise _Bad(path, f"must be a short string, got {_show(value)}")


def _anything(value: object, path: str, stages: int | None) -> None:
    """Free-form provenance (`meta`): not read by ppc."""


def _optional(check: Check) -> Check:
    def optional(value: object, path: str, stages: int | None) -> None:
        if value is not None:
            check(value, path, stages)

    return optional


TIME = _number(0.0, MAX_TIME, what="a time >= 0")
BYTES = _number(0.0, MAX_BYTES, what="a byte count >= 0")
COUNT = _number(0.0, MAX_COUNT, what="a count >= 0", integer=True)
POSITIVE = _number(1.0, MAX_COUNT, what="a whole number >= 1", integer=True)
BANDWIDTH = _number(MIN_BANDWIDTH, math.inf, what="bytes per time unit", allow_inf=True)
SHARE = _number(0.0, 1.0, what="a share in [0, 1]")
CORES = _number(0.01, 1e6, what="a number of cores")
THREADS = _number(1.0, 1e6, what="a whole number of threads", integer=True)

FACTOR = _number(1e-6, 1e6, what="a factor > 0")
COMM = {"latency": TIME, "bandwidth": BANDWIDTH, "post": TIME}
HOST = {"cores": CORES, "threads": THREADS}
COLLECTIVE = {"latency": TIME, "bandwidth": BANDWIDTH}
LAYER = {"name": _string, "F": TIME, "I": TIME, "W": TIME, "B": TIME,
         "params": COUNT, "activation_bytes": BYTES, "output_bytes": BYTES}

SCHEMA: dict[str, Check] = {
    "unit": _string,
    "F": _per_stage(TIME), "I": _per_stage(TIME), "W": _per_stage(TIME), "B": _per_stage(TIME),
    "step": _per_stage(TIME),
    "activation_bytes": _per_stage(BYTES, empty_ok=True),  # []: unknown
    "weight_share": SHARE,
    "comm": _object(COMM), **COMM,
    "host": _object(HOST), **HOST,
    "overlap": lambda value, path, stages: (_object({"factor": FACTOR, "time": TIME}) if isinstance(
        value, dict) else FACTOR)(value, path, stages),  # overlapped F&B ops: a factor, or {"time": t}
    "overlap_time": TIME,
    # data parallelism (ppc/costs.py): ring collectives across pipeline replicas, gradient bytes per stage
    "collective": _object(COLLECTIVE),
    "param_bytes": _per_stage(BYTES, empty_ok=True),
    # written by `ppc profile`, read by `ppc plan` (ppc/profiling/cost_profile.py)
    "layers": _list_of(_object(LAYER)),
    "split": _list_of(POSITIVE),
    "microbatch_size": POSITIVE,
    "seq_len": _optional(POSITIVE),
    "op_overhead": TIME,
    "bytes_per_param": _number(0.0, 1e6, what="bytes per parameter"),
    "stage_params": _list_of(COUNT),
    "stage_output_bytes": _list_of(BYTES),
    "meta": _anything,
}

INLINE_KEYS = ("F", "B", "I", "W", "latency", "bandwidth", "weight_share", "step", "post",
               "cores", "threads", "overlap", "overlap_time", "collective_latency", "collective_bandwidth",
               "param_bytes")
"""The keys `--costs KEY=NUMBER,...` takes."""


def closest_key(key: str, known) -> str:
    """` (did you mean 'F'?)` for a near miss of a known key, else the known keys."""
    known = list(known)
    lowered = {k.lower(): k for k in known}
    guess = _ALIASES.get(key.lower()) or lowered.get(key.lower())
    if guess is None or guess not in known:
        matches = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        guess = matches[0] if matches else None
    if guess is not None:
        return f" (did you mean {guess!r}?)"
    return f" (known keys: {', '.join(known)})"


def check_costs(data: object, source: str, stages: int | None = None) -> dict:
    """`data` itself when it fits SCHEMA (per-stage lists of `stages` values when given);
    otherwise one CostError: `source: path: what is wrong`."""
    try:
        _object(SCHEMA)(data, "", stages)
    except _Bad as bad:
        raise CostError(f"{source}: {bad}") from None
    return data

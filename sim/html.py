"""An interactive timeline in one self-contained HTML file (`ppc simulate --out x.html`).

The page needs no network: a small canvas renderer (sim/timeline.js, written for ppc)
is inlined, and the spans travel as typed arrays in one base64 block (per op: start and
end as float32, kind as uint8, stage and microbatch as uint16 or uint32; transfers add
the peer and an index into a table of byte counts). 262,144 ops make about 4 MB. In
the browser: wheel to zoom around the pointer, drag to pan, double-click to see the
whole step, hover for the op, its rank, stage, microbatch, start, end and bytes.

Each rank's row shows its compute ops (F, B, I, W) and, in a thin band under them, the
communication instructions that take time (waiting receives, posted groups, the step)
or move bytes.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from ppc.sim.colors import colors
from ppc.sim.lanes import Lane, lanes, measured_lanes, stage_chunks
from ppc.sim.timeline import Timeline

__all__ = ["page", "write_html"]

log = logging.getLogger(__name__)


def write_html(timelines: Sequence[Timeline], path: str | Path, *, title: str | None = None,
               measured=None) -> None:
    """Write the timelines (and a measured step, a compare_trace.Comparison) as one page."""
    Path(path).write_text(page(timelines, title=title, measured=measured), encoding="utf-8")


def page(timelines: Sequence[Timeline], *, title: str | None = None, measured=None) -> str:
    """The HTML text: the renderer and the encoded spans of every timeline."""
    blob = _Blob()
    groups = []
    for timeline in timelines:
        program = timeline.program
        log.info("encoding %s: %d ranks", program.schedule, program.ranks)
        groups.append({
            "caption": _caption(timeline),
            "ranks": program.ranks,
            "chunks": stage_chunks(program).tolist(),
            "virtual": program.virtual,
            "compute": _encode(blob, lanes(timeline)),
            "comm": _encode(blob, lanes(timeline, comm=True), comm=True),
        })
    if measured is not None:
        program = timelines[0].program
        groups.append({
            "caption": f"measured (trace, one step): makespan {measured.measured_makespan:.4g}  "
                       f"prediction error {measured.error:+.1%}",
            "ranks": program.ranks, "chunks": stage_chunks(program).tolist(), "virtual": program.virtual,
            "compute": _encode(blob, measured_lanes(measured, program.ranks)), "comm": None,
        })
    horizon = max([t.makespan for t in timelines] + ([measured.measured_makespan] if measured else []))
    meta = {
        "title": title or " vs ".join(t.program.schedule for t in timelines),
        "unit": timelines[0].costs.unit,
        "horizon": horizon or 1.0,
        "kinds": list(colors()),
        "colors": list(colors().values()),
        "groups": groups,
    }
    script = resources.files("ppc.sim").joinpath("timeline.js").read_text(encoding="utf-8")
    return (_TEMPLATE
            .replace("@TITLE@", _escape(meta["title"]))
            .replace("@META@", json.dumps(meta, separators=(",", ":")).replace("</", "<\\/"))
            .replace("@DATA@", base64.b64encode(blob.data()).decode("ascii"))
            .replace("@SCRIPT@", script))


class _Blob:
    """Typed arrays appended to one byte buffer, each at an 8-byte aligned offset."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, array: np.ndarray) -> dict:
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        entry = {"type": _JS_TYPE[array.dtype.name], "offset": self._size, "length": len(array)}
        pad = -len(data) % 8
        self._parts.append(data + b"\0" * pad)
        self._size += len(data) + pad
        return entry

    def data(self) -> bytes:
        return b"".join(self._parts)


_JS_TYPE = {"float32": "Float32Array", "uint8": "Uint8Array", "uint16": "Uint16Array",
            "uint32": "Uint32Array", "int16": "Int16Array", "int32": "Int32Array"}


def _encode(blob: _Blob, rank_lanes: list[Lane], *, comm: bool = False) -> dict:
    """All ranks' spans, concatenated; `offsets[r]` is where rank r's begin."""
    def cat(field: str) -> np.ndarray:
        return np.concatenate([getattr(lane, field) for lane in rank_lanes] + [np.zeros(0, np.int32)])

    offsets = np.cumsum([0] + [len(lane) for lane in rank_lanes]).tolist()
    out = {
        "offsets": offsets,
        "start": blob.add(cat("start").astype(np.float32)),
        "end": blob.add(cat("end").astype(np.float32)),
        "code": blob.add(cat("code").astype(np.uint8)),
        "stage": blob.add(_narrow(cat("stage"))),
        "mb": blob.add(_narrow(cat("mb"))),
    }
    if comm:
        out["peer"] = blob.add(cat("peer").astype(np.int16 if len(rank_lanes) < 2**15 else np.int32))
        sizes, index = np.unique(cat("nbytes"), return_inverse=True)
        out["bytes"] = [int(s) for s in sizes]
        out["bytesIndex"] = blob.add(_narrow(index))
    return out


def _narrow(values: np.ndarray) -> np.ndarray:
    """Non-negative ints as uint16 when they fit, else uint32."""
    top = int(values.max()) if len(values) else 0
    return values.astype(np.uint16 if top < 2**16 else np.uint32)


def _caption(timeline: Timeline) -> str:
    program = timeline.program
    return (f"{program.schedule}: R={program.ranks} M={program.microbatches} S={program.stages}  "
            f"makespan {timeline.makespan:g} {timeline.costs.unit}  bubble {timeline.bubble:.1%}  "
            f"peak activations {timeline.peak_activations}")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ppc timeline: @TITLE@</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 0; color: #222; }
header { padding: 8px 12px; border-bottom: 1px solid #ddd; position: sticky; top: 0; background: #fff; z-index: 1; }
header h1 { font-size: 15px; margin: 0 0 4px 0; }
#legend span { display: inline-block; margin-right: 12px; }
#legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -2px; }
#help { color: #666; }
#timeline { display: block; }
#tip { position: fixed; pointer-events: none; background: #fffff0; border: 1px solid #999; padding: 4px 6px;
       font: 12px ui-monospace, monospace; white-space: pre; display: none; z-index: 2; }
</style>
</head>
<body>
<header><h1>@TITLE@</h1><div id="legend"></div>
<div id="help">wheel: zoom at the pointer &middot; drag: pan &middot; double-click: whole step &middot;
hover: op details &middot; keys + - &larr; &rarr; 0</div></header>
<canvas id="timeline"></canvas>
<div id="tip"></div>
<script id="ppc-meta" type="application/json">@META@</script>
<script id="ppc-data" type="application/octet-stream">@DATA@</script>
<script>
@SCRIPT@
</script>
</body>
</html>
"""

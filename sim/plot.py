"""Timeline pictures with matplotlib, at any scale.

A small step (every op at least a few pixels wide) is drawn in detail: one row per rank,
F/B/I/W colored, microbatches written on the boxes, a rank's later stages (V > 1) in
lighter shades. A larger step gets an overview (each rank a strip whose color at every
pixel mixes the kinds that ran there, white where the rank idled) and, under it, the
first and the last R microbatches' worth of time in detail. Either way the cost grows
with ranks, not ops: one drawing call per (rank, kind, shade), one image for the overview.

Several timelines stack into one figure for comparison; with a measured step
(`--against`), its trace is drawn the same way under the prediction, on the same time
axis. Formats: .svg, .png (matplotlib) and .html (an interactive page, ppc.sim.html).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ppc.sim.colors import colors
from ppc.sim.lanes import Lane, lanes, measured_lanes, stage_chunks
from ppc.sim.timeline import Timeline

from ppc.ir import ops

__all__ = ["FORMATS", "draw", "figure"]

log = logging.getLogger(__name__)

FORMATS = (".svg", ".png", ".html")

DETAIL_MIN_PX = 10.0
"""Below this median op width (pixels, whole step) the picture becomes overview + zooms."""
DETAIL_MAX_OPS = 4096
_WIDTH_IN, _DPI = 14.0, 150
_LEFT, _RIGHT, _TOP, _BOTTOM, _GAP, _COLUMN_GAP = 0.85, 0.2, 0.7, 0.1, 0.75, 0.95
"""Margins and gaps in inches: axes sit at fixed places, so no layout engine (which would
draw the figure twice) is needed."""
_PLOT_PX = (_WIDTH_IN - _LEFT - _RIGHT) * _DPI
_LABEL_PX = 11.0
_MAX_LABELS = 2500


def _compute_kinds() -> list[tuple[str, int, str]]:
    """(name, code, colour) of every compute kind in the op table."""
    return [(k.name, k.code, k.colour) for k in ops.compute_kinds()]


def draw(timelines: Sequence[Timeline], path: str | Path, *, title: str | None = None, measured=None) -> None:
    """Draw the timelines (top to bottom, same time axis) to `path` (.svg, .png, .html);
    `measured` (a ppc.plan.compare_trace.Comparison) adds the measured step below."""
    path = Path(path)
    if path.suffix == ".html":
        from ppc.sim.html import write_html

        write_html(timelines, path, title=title, measured=measured)
        return
    import matplotlib.pyplot as plt

    fig = figure(timelines, title=title, measured=measured)
    log.info("saving %s", path)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def figure(timelines: Sequence[Timeline], *, title: str | None = None, measured=None):
    """The matplotlib Figure `draw` saves: every op as a box when all are wide enough to
    read, else per timeline an overview and its first and last windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = max([t.makespan for t in timelines] + ([measured.measured_makespan] if measured else [])) or 1.0
    groups = [(t, lanes(t)) for t in timelines]
    detailed = measured is not None or all(_fits(t, ls, horizon) for t, ls in groups)
    log.info("drawing %s", "one row per rank" if detailed else "an overview and zoomed windows")
    fig = _detailed(plt, groups, horizon, measured) if detailed else _overview(plt, groups, horizon)
    if title:
        fig.suptitle(title, x=0.01, y=1.0, ha="left", va="top")
    return fig


def _fits(timeline: Timeline, rank_lanes: list[Lane], horizon: float) -> bool:
    """Whether every op of the whole step can be drawn (and read) as its own box."""
    count = sum(len(lane) for lane in rank_lanes)
    if count > DETAIL_MAX_OPS:
        return False
    widths = np.concatenate([lane.end - lane.start for lane in rank_lanes] + [np.zeros(0)])
    return count == 0 or float(np.median(widths)) * _PLOT_PX / horizon >= DETAIL_MIN_PX


def _axes(plt, rows: list[tuple[float, int]]):
    """A figure with rows of axes, top to bottom: (height in inches, columns) each."""
    height = _TOP + sum(h + _GAP for h, _ in rows) + _BOTTOM
    fig = plt.figure(figsize=(_WIDTH_IN, height))
    out, top = [], height - _TOP
    for h, columns in rows:
        width = (_WIDTH_IN - _LEFT - _RIGHT - _COLUMN_GAP * (columns - 1)) / columns
        bottom = top - h
        out.append([fig.add_axes((( _LEFT + j * (width + _COLUMN_GAP)) / _WIDTH_IN, bottom / height,
                                  width / _WIDTH_IN, h / height)) for j in range(columns)])
        top = bottom - _GAP
    return fig, out


def _detailed(plt, groups, horizon: float, measured):
    heights = [max(1.0, 0.35 * t.program.ranks) for t, _ in groups]
    if measured is not None:
        heights.append(heights[0])
    fig, rows = _axes(plt, [(h, 1) for h in heights])
    axes = [row[0] for row in rows]
    for ax, (timeline, rank_lanes) in zip(axes, groups):
        _boxes(ax, rank_lanes, stage_chunks(timeline.program), timeline.program.virtual, (0.0, horizon))
        _reductions(ax, timeline, (0.0, horizon))
        _rank_axis(ax, timeline.program.ranks)
        ax.set_title(_caption(timeline), fontsize=9, loc="left")
    if measured is not None:
        program = groups[0][0].program
        ax = axes[-1]
        _boxes(ax, measured_lanes(measured, program.ranks), stage_chunks(program), program.virtual,
               (0.0, horizon))
        _rank_axis(ax, program.ranks)
        ax.set_title(f"measured (trace, one step): makespan {measured.measured_makespan:.4g}  "
                     f"prediction error {measured.error:+.1%}", fontsize=9, loc="left")
    for ax in axes:
        ax.set_xlim(0, horizon)
        ax.set_xlabel(f"time ({groups[0][0].costs.unit})", fontsize=8)
    _legend(fig, groups)
    return fig


def _overview(plt, groups, horizon: float):
    """Per timeline: the whole step as an image, then its first and last windows in detail."""
    plan = []
    for timeline, _ in groups:
        height = max(1.2, 0.13 * timeline.program.ranks)
        plan += [(height, 1), (height, len(_windows(timeline)))]
    fig, rows = _axes(plt, plan)
    for i, (timeline, rank_lanes) in enumerate(groups):
        program = timeline.program
        top = rows[2 * i][0]
        top.imshow(_strips(rank_lanes, horizon), aspect="auto", interpolation="nearest",
                   extent=(0, horizon, program.ranks - 0.5, -0.5))
        _rank_axis(top, program.ranks)
        top.set_xlim(0, horizon)
        top.set_title(f"{_caption(timeline)}   (whole step: each pixel mixes the kinds that ran in it; "
                      "dashed: the windows below)", fontsize=9, loc="left")
        top.set_xlabel(f"time ({timeline.costs.unit})", fontsize=8)
        chunks = stage_chunks(program)
        for ax, (lo, hi, name) in zip(rows[2 * i + 1], _windows(timeline)):
            _boxes(ax, rank_lanes, chunks, program.virtual, (lo, hi))
            _reductions(ax, timeline, (lo, hi))
            _rank_axis(ax, program.ranks)
            ax.set_xlim(lo, hi)
            ax.set_title(f"{name}: {lo:.4g} to {hi:.4g} {timeline.costs.unit}", fontsize=9, loc="left")
            ax.set_xlabel(f"time ({timeline.costs.unit})", fontsize=8)
            top.axvspan(lo, hi, facecolor="none", edgecolor="black", linewidth=1.0, linestyle="--")
    _legend(fig, groups)
    return fig


def _windows(timeline: Timeline) -> list[tuple[float, float, str]]:
    """The first and last R microbatches' worth of time: R times a rank's mean busy time
    per (stage, microbatch), so each zoom shows about R boxes of each kind per rank."""
    program = timeline.program
    span = timeline.makespan
    busy = sum(s.busy for s in timeline.per_rank) / max(program.ranks, 1)
    width = program.ranks * busy / max(program.microbatches * program.virtual, 1)
    if not 0 < width < span / 2:
        return [(0.0, span, "whole step")]
    return [(0.0, width, f"first {program.ranks} microbatches' worth"),
            (span - width, span, f"last {program.ranks} microbatches' worth")]


def _strips(rank_lanes: list[Lane], horizon: float, columns: int = int(_PLOT_PX)) -> np.ndarray:
    """An RGB image, one strip per rank (a white line between ranks): each column's color
    is white minus, for each kind, its share of the column's time times (white - color)."""
    rows_per_rank = 8 if len(rank_lanes) > 1 else 1
    edges = np.linspace(0.0, horizon, columns + 1)
    image = np.ones((len(rank_lanes) * rows_per_rank, columns, 3))
    for lane in rank_lanes:
        ink = np.zeros((columns, 3))
        for _, code, colour in _compute_kinds():
            pick = lane.code == code
            if pick.any():
                ink += _coverage(lane.start[pick], lane.end[pick], edges)[:, None] * (1 - _rgb(colour))
        row = lane.rank * rows_per_rank
        image[row:row + max(rows_per_rank - 1, 1)] = np.clip(1 - ink, 0, 1)
    return np.round(image * 255).astype(np.uint8)


def _coverage(start: np.ndarray, end: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of each column [edges[j], edges[j+1]] covered by the (non-overlapping,
    ordered) intervals."""
    done = np.cumsum(end - start)
    x = np.column_stack([start, end]).ravel()
    y = np.column_stack([done - (end - start), done]).ravel()
    covered = np.interp(edges, x, y, left=0.0, right=float(done[-1]))
    return np.diff(covered) / np.diff(edges)


def _boxes(ax, rank_lanes: list[Lane], chunks: np.ndarray, virtual: int, window: tuple[float, float]) -> None:
    """Each op in `window` as a box, all in one PolyCollection (one drawing call, whatever
    the number of ops); microbatch labels where boxes are wide and few enough to read."""
    from matplotlib.collections import PolyCollection

    lo, hi = window
    px = _PLOT_PX / max(hi - lo, 1e-12)
    views = [(lane, lane.window(lo, hi)) for lane in rank_lanes]

    def cat(field: str) -> np.ndarray:
        return np.concatenate([getattr(lane, field)[v] for lane, v in views] + [np.zeros(0)])

    start, end, code, stage = cat("start"), cat("end"), cat("code").astype(int), cat("stage").astype(int)
    rank = np.concatenate([np.full(v.stop - v.start, lane.rank) for lane, v in views] + [np.zeros(0)])
    if not len(start):
        return
    palette = np.array([[_shaded(colour, c, virtual) for c in range(virtual)] for colour in colors().values()])
    verts = np.stack([np.column_stack([start, rank - 0.4]), np.column_stack([start, rank + 0.4]),
                      np.column_stack([end, rank + 0.4]), np.column_stack([end, rank - 0.4])], axis=1)
    edge = float(np.median(end - start)) * px >= 4
    ax.add_collection(PolyCollection(verts, facecolors=palette[code, chunks[stage]],
                                     edgecolors="white" if edge else "none", linewidths=0.4 if edge else 0))
    wide = np.flatnonzero((end - start) * px >= _LABEL_PX)
    if 0 < len(wide) <= _MAX_LABELS:
        mb = cat("mb").astype(int)
        for i in wide.tolist():
            ax.text((max(start[i], lo) + min(end[i], hi)) / 2, rank[i], str(mb[i]), ha="center",
                    va="center", fontsize=6, clip_on=True)


def reduce_spans(timeline: Timeline) -> list[tuple[int, float, float]]:
    """(rank, start, end) of every data-parallel reduction that takes time."""
    if timeline.dp <= 1:
        return []
    is_reduce = ops.Codes.get().is_reduce
    return [(s.rank, s.start, s.end) for s in timeline.spans()
            if is_reduce[s.instruction.op.code] and s.end > s.start]


def _reductions(ax, timeline: Timeline, window: tuple[float, float]) -> None:
    """The reductions, which run on the network beside compute, as thin bars along the
    bottom edge of each rank's row, in REDUCE_GRAD's colour."""
    from matplotlib.collections import PolyCollection

    lo, hi = window
    spans = [(r, a, b) for r, a, b in reduce_spans(timeline) if b > lo and a < hi]
    if spans:
        verts = [((a, r + 0.41), (a, r + 0.5), (b, r + 0.5), (b, r + 0.41)) for r, a, b in spans]
        ax.add_collection(PolyCollection(verts, facecolors=ops.get("REDUCE_GRAD").colour, edgecolors="none"))


def _rank_axis(ax, ranks: int) -> None:
    step = 1 if ranks <= 32 else (4 if ranks <= 128 else 16)
    ax.set_ylim(ranks - 0.5, -0.5)
    ax.set_yticks(range(0, ranks, step), [f"rank {r}" for r in range(0, ranks, step)], fontsize=7)
    ax.tick_params(axis="x", labelsize=7)


def _caption(timeline: Timeline) -> str:
    program = timeline.program
    return (f"{program.schedule}: R={program.ranks} M={program.microbatches} S={program.stages}  "
            f"makespan {timeline.makespan:g}  bubble {timeline.bubble:.1%}  "
            f"peak activations {timeline.peak_activations}")


def _legend(fig, groups) -> None:
    from matplotlib.patches import Patch

    virtual = max(t.program.virtual for t, _ in groups)
    used = set().union(*(np.unique(lane.code).tolist() for _, ls in groups for lane in ls))
    handles = [Patch(color=colour, label=k) for k, c, colour in _compute_kinds() if c in used]
    if any(reduce_spans(t) for t, _ in groups):
        handles.append(Patch(color=ops.get("REDUCE_GRAD").colour, label="REDUCE_GRAD (network)"))
    if virtual > 1:
        handles += [Patch(color=_shaded("#808080", c, virtual), label=f"stage {c + 1} of {virtual} on a rank")
                    for c in range(virtual)]
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles), frameon=False,
               fontsize=8)


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])


def _shaded(color: str, chunk: int, virtual: int) -> tuple[float, float, float]:
    """`color` mixed with white: the rank's first stage full, its last at 40%."""
    alpha = 1.0 - 0.6 * chunk / (virtual - 1) if virtual > 1 else 1.0
    return tuple(alpha * c + 1 - alpha for c in _rgb(color))

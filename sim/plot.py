"""Timeline pictures with matplotlib: one row per rank, F/B/I/W colored, microbatches
written on the boxes, a rank's later stages (V > 1) in lighter shades. Several timelines
stack into one figure for comparison; with a measured step (`--against`), its trace is
drawn the same way under the prediction, on the same time axis.
Formats: .svg, .png (matplotlib) and .html (the SVG inside a page).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from ppc.sim.timeline import Timeline

from ppc.ir import ops

COLORS = ops.colours()
FORMATS = (".svg", ".png", ".html")


def draw(timelines: Sequence[Timeline], path: str | Path, *, title: str | None = None, measured=None) -> None:
    """Draw the timelines (top to bottom, same time axis) to `path` (.svg, .png, .html);
    `measured` (a ppc.plan.compare_trace.Comparison) adds the measured step below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    path = Path(path)
    horizon = max([t.makespan for t in timelines] + ([measured.measured_makespan] if measured else [])) or 1.0
    heights = [max(1.2, 0.35 * t.program.ranks + 0.6) for t in timelines]
    if measured is not None:
        heights.append(heights[0])
    fig, axes = plt.subplots(
        len(heights), 1, figsize=(12, sum(heights) + 0.6), squeeze=False,
        gridspec_kw={"height_ratios": heights}, sharex=True,
    )
    for ax, timeline in zip(axes[:, 0], timelines):
        _draw_one(ax, timeline, horizon)
    if measured is not None:
        _draw_measured(axes[-1, 0], measured, timelines[0].program, horizon)
    axes[-1, 0].set_xlabel(f"time ({timelines[0].costs.unit})")
    handles = [Patch(color=c, label=k) for k, c in COLORS.items()]
    fig.legend(handles=handles, loc="upper right", ncol=4, frameon=False)
    if title:
        fig.suptitle(title, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    if path.suffix == ".html":
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
        path.write_text(f"<!doctype html><meta charset='utf-8'><title>ppc timeline</title>\n{buffer.getvalue()}")
    else:
        fig.savefig(path, dpi=150)
    plt.close(fig)


def _chunks(program) -> dict[int, int]:
    """Stage -> its index among its rank's stages (0 for the first), for the shade."""
    chunk = {}
    for rank in range(program.ranks):
        for i, stage in enumerate(s for s, r in enumerate(program.placement) if r == rank):
            chunk[stage] = i
    return chunk


def _draw_measured(ax, comparison, program, horizon: float) -> None:
    chunk = _chunks(program)
    label_min = horizon / 150
    for piece in comparison.measured_slices:
        start, end, rank = piece.start, piece.end, piece.rank
        ax.broken_barh([(start, end - start)], (rank - 0.4, 0.8), facecolors=COLORS[piece.kind], edgecolors="white",
                       linewidth=0.4, alpha=1.0 - 0.35 * min(chunk.get(piece.stage, 0), 2))
        if end - start >= label_min:
            ax.text((start + end) / 2, rank, str(piece.mb), ha="center", va="center", fontsize=6)
    ax.set_ylim(program.ranks - 0.5, -0.5)
    ax.set_yticks(range(program.ranks), [f"rank {r}" for r in range(program.ranks)], fontsize=7)
    ax.set_xlim(0, horizon)
    ax.set_title(
        f"measured (trace, one step): makespan {comparison.measured_makespan:.4g}  "
        f"prediction error {comparison.error:+.1%}",
        fontsize=9, loc="left",
    )


def _draw_one(ax, timeline: Timeline, horizon: float) -> None:
    program = timeline.program
    label_min = horizon / 150
    chunk = _chunks(program)
    for rank in range(program.ranks):
        base = timeline.offset[rank]
        for i, instr in enumerate(program.instructions[rank]):
            if not instr.op.is_compute:
                continue
            start, end = timeline.start[base + i], timeline.end[base + i]
            kind = instr.op.value
            ax.broken_barh([(start, end - start)], (rank - 0.4, 0.8), facecolors=COLORS[kind],
                           edgecolors="white", linewidth=0.4, alpha=1.0 - 0.35 * min(chunk[instr.stage], 2))
            if end - start >= label_min and program.ranks * program.microbatches <= 2048:
                ax.text((start + end) / 2, rank, str(instr.mb), ha="center", va="center", fontsize=6)
    ax.set_ylim(program.ranks - 0.5, -0.5)
    ax.set_yticks(range(program.ranks), [f"rank {r}" for r in range(program.ranks)], fontsize=7)
    ax.set_xlim(0, horizon)
    ax.set_title(
        f"{program.schedule}: R={program.ranks} M={program.microbatches} S={program.stages}  "
        f"makespan {timeline.makespan:g}  bubble {timeline.bubble:.1%}  "
        f"peak activations {timeline.peak_activations}",
        fontsize=9, loc="left",
    )

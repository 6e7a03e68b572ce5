"""Plain-data reports of a timeline: the `--json` document and comparison rows."""

from __future__ import annotations

from ppc.sim.timeline import Timeline


def to_json(timeline: Timeline) -> dict:
    """The `ppc simulate --json` document (per rank, with data parallelism, its reduction
    time and the exposed part of it)."""
    program = timeline.program
    return {
        "schedule": program.schedule,
        "ranks": program.ranks,
        "stages": program.stages,
        "microbatches": program.microbatches,
        "unit": timeline.costs.unit,
        "makespan": timeline.makespan,
        "bubble": timeline.bubble,
        "dp": timeline.dp,
        "zero": timeline.zero,
        "exposed_reduce": timeline.exposed_reduce,
        "per_rank": [
            {
                "rank": s.rank,
                "busy": s.busy,
                "idle": s.idle,
                "bubble": s.bubble,
                "peak_activations": s.peak_activations,
                "peak_bytes": s.peak_bytes,
                **({"reduce": s.reduce, "exposed_reduce": s.exposed_reduce} if timeline.dp > 1 else {}),
            }
            for s in timeline.per_rank
        ],
        "critical_path": [span.to_json() for span in timeline.critical_path],
        "notes": list(program.notes),
        "host": {"cores": timeline.costs.cores, "threads": timeline.costs.threads, "post": timeline.costs.post}
        if timeline.costs.cores is not None else None,
    }


def summary(timeline: Timeline) -> dict:
    """One comparison row: what a user asks first about a schedule. Peak activations also
    in one unit across V: a set of a stage of 1/V of a rank's layers is 1/V of a V = 1 set
    (`peak_stage_equivalents`)."""
    peaks_bytes = [s.peak_bytes for s in timeline.per_rank if s.peak_bytes is not None]
    return {
        "schedule": timeline.program.schedule,
        "ranks": timeline.program.ranks,
        "stages": timeline.program.stages,
        "microbatches": timeline.program.microbatches,
        "makespan": timeline.makespan,
        "bubble": timeline.bubble,
        "peak_activations": timeline.peak_activations,
        "peak_stage_equivalents": timeline.peak_activations / timeline.program.virtual,
        "peak_bytes": max(peaks_bytes) if peaks_bytes else None,
    }

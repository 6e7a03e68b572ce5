"""What `ppc plan` hands the user: the winning schedule's text and its `ppc run` line."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from ppc.plan.log_costs import EMBED, HEAD
from ppc.plan.planner import Candidate


def schedule_text(candidate: Candidate) -> str:
    """The .ppc text of the candidate's schedule, headed by comments that record the plan."""
    if candidate.source:
        body = candidate.source
    else:
        from ppc.lang import builtin_schedules, load_schedule

        path = builtin_schedules().get(candidate.schedule) or load_schedule(candidate.schedule).path
        body = Path(path).read_text()
    header = (
        f"# ppc plan: {candidate.describe()}"
        + (f", {candidate.dp} pipeline replicas (DP)" if candidate.dp > 1 else "") + "\n"
        f"# predicted step time {candidate.step_time:.6g}, bubble {candidate.bubble:.1%}, "
        f"peak memory per rank {max(candidate.peak_bytes) / 2**30:.2f} GiB (a prediction)\n"
    )
    return header + body


def block_split(split: Sequence[int], units: Sequence[str]) -> tuple[int, ...] | None:
    """The plan's units per stage as `ppc run --split` counts them: decoder blocks per stage.

    `units` are the names of the plan's units in model order (CostProfile.layer_units()).
    A logged profile counts the embedding (`embed`) and the head (`lm_head`) as units of
    their own; the frontend cuts only between blocks and keeps them with the first and
    last stage, so they come off the first and last stage's count, which may then be 0 (a
    stage with the embedding alone, or with the head alone). `ppc profile`'s units are
    the blocks themselves. None when the split cannot be given as blocks: a middle stage
    would hold no block, or the costs carry no per-layer units.
    """
    if not units or len(units) != sum(split) or all(name.startswith("stage") for name in units):
        return None
    sizes = list(split)
    sizes[0] -= units[0] == EMBED
    sizes[-1] -= units[-1] == HEAD
    if min(sizes) < 0 or min(sizes[1:-1], default=1) < 1 or sum(sizes) < 1:
        return None
    return tuple(sizes)


def run_command(candidate: Candidate, *, schedule_path: str | Path, model: str, ranks: int,
                seq_len: int | None = None, units: Sequence[str] = (), dp: int = 1) -> str:
    """The `ppc run` command line that trains with this plan (with `--split` when the
    planned split can be given as blocks per stage; else the split as a comment; with
    `--dp D` for D pipeline replicas)."""
    argv = [
        "ppc", "run", "--model", model, "--schedule", str(schedule_path),
        "--ranks", str(ranks), "--virtual-stages", str(candidate.virtual),
        "--microbatches", str(candidate.microbatches), "--microbatch-size", str(candidate.microbatch_size),
    ]
    if dp > 1:
        argv += ["--dp", str(dp)]
    if seq_len:
        argv += ["--seq-len", str(seq_len)]
    blocks = block_split(candidate.split, units)
    if blocks is not None:
        return shlex.join([*argv, "--split", ",".join(map(str, blocks))])
    planned = ",".join(map(str, candidate.split))
    return shlex.join(argv) + (
        f"  # planned units per stage: {planned}; not expressible as --split "
        "(a middle stage would hold no decoder block, or the costs have no per-layer units)"
    )

"""What `ppc plan` hands the user: the winning schedule's text and its `ppc run` line."""

from __future__ import annotations

import shlex
from pathlib import Path

from ppc.profiling.plan import Candidate


def schedule_text(candidate: Candidate) -> str:
    """The .ppc text of the candidate's schedule, headed by comments that record the plan."""
    if candidate.source:
        body = candidate.source
    else:
        from ppc.lang import builtin_schedules, load_schedule

        path = builtin_schedules().get(candidate.schedule) or load_schedule(candidate.schedule).path
        body = Path(path).read_text()
    header = (
        f"# ppc plan: {candidate.describe()}\n"
        f"# predicted step time {candidate.step_time:.6g}, bubble {candidate.bubble:.1%}, "
        f"peak memory per rank {max(candidate.peak_bytes) / 2**30:.2f} GiB (a prediction)\n"
    )
    return header + body


def run_command(candidate: Candidate, *, schedule_path: str | Path, model: str, ranks: int,
                seq_len: int | None = None) -> str:
    """The `ppc run` command line that trains with this plan."""
    argv = [
        "ppc", "run", "--model", model, "--schedule", str(schedule_path),
        "--ranks", str(ranks), "--virtual", str(candidate.virtual),
        "--microbatches", str(candidate.microbatches), "--microbatch-size", str(candidate.microbatch_size),
    ]
    if seq_len:
        argv += ["--seq-len", str(seq_len)]
    # `ppc run --split` takes a method (cost, layers, params), not a list of layers per stage
    return shlex.join(argv) + f"  # planned layers per stage: {','.join(map(str, candidate.split))}"

"""`ppc profile --ranks R`: op costs as the R ranks of a CPU run on this host pay them.

On one CPU host an op costs a rank more CPU time inside a pipeline than alone: ranks
block and wake around every transfer, so each op starts on a core whose caches another
rank has just used, and the runtime posts transfers and syncs the optimizer step. Timing
ops alone misses that. So the profiler runs the executor itself, `ppc run` with R gloo
ranks and a calibration schedule (GPipe, or looped BFS with V stages per rank) for a few
steps with `--trace`, and reads each slice's CPU time (`args.cpu_ms`): per stage F and B,
per rank STEP, and per group of transfers the posting cost. CPU time leaves out the
waits and the time a rank sat ready without a core; the simulator adds both back (the
`host` in ppc/costs.py) for whichever schedule it is asked about.

The host's cores are shared less well than ideal processor sharing assumes (a rank that
a message wakes waits for the scheduler, and switching ranks costs time). So the
calibration run's own step time fixes one number: the effective cores with which the
simulator predicts the calibration schedule at its measured step time (never more than
the physical cores). Other schedules are then predicted with that host.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from ppc.errors import CostError
from ppc.plan.compare_trace import compute_slice

log = logging.getLogger(__name__)

__all__ = ["calibrate_on_host", "calibration_schedule", "costs_from_trace", "fit_cores"]

def calibration_schedule(ranks: int, stages: int) -> tuple[str, int]:
    """(schedule, V) the calibration run uses: GPipe-ordered, so it is not the schedule
    being predicted (1F1B, interleaved, zero-bubble)."""
    if ranks < 1 or stages % ranks:
        raise CostError(f"--ranks {ranks} needs the stages ({stages}) to be a multiple of the ranks")
    virtual = stages // ranks
    return ("gpipe", 1) if virtual == 1 else ("looped_bfs", virtual)


def calibrate_on_host(profile, request, *, timeout: float = 900.0):
    """`profile` (measured alone) with its op, step and posting costs replaced by those of a
    calibration run of the executor on `request.ranks` ranks of this host."""
    from ppc.host import host_cores, threads_per_rank

    ranks, stages = request.ranks, profile.stages
    schedule, virtual = calibration_schedule(ranks, stages)
    skip = max(1, request.warmup)
    steps = skip + max(3, request.repeats)
    events, step_times = _run_calibration(request, schedule, virtual=virtual, steps=steps, timeout=timeout)
    measured_step = statistics.median(step_times[skip:] or step_times)
    placement = [s % ranks for s in range(stages)]
    measured = costs_from_trace(events, stages=stages, placement=placement, skip_steps=skip)
    c = profile.stage_costs
    share = [c.backward_input[s] / c.backward(s) if c.backward(s) > 0 else 0.5 for s in range(stages)]
    optimizer = _split_step(measured["step"], placement, c.optimizer)
    costs = dataclasses.replace(
        c,
        forward=tuple(measured["F"]),
        backward_input=tuple(b * x for b, x in zip(measured["B"], share)),
        backward_weight=tuple(b * (1 - x) for b, x in zip(measured["B"], share)),
        optimizer=optimizer,
        post=measured["post"],
        cores=float(host_cores()),
        threads=threads_per_rank(ranks),
    )
    physical = costs.cores
    order = _calibration_order(schedule, ranks=ranks, virtual=virtual, microbatches=2 * ranks)
    costs = fit_cores(costs, lambda c: _predict(order, c, profile), measured_step)
    alone = sum(c.forward) + sum(c.backward(s) for s in range(stages))
    in_run = sum(costs.forward) + sum(costs.backward(s) for s in range(stages))
    ratio = in_run / alone if alone > 0 else 1.0
    layers = tuple(
        dataclasses.replace(x, forward=x.forward * ratio, backward_input=x.backward_input * ratio,
                            backward_weight=x.backward_weight * ratio)
        for x in profile.layers
    )
    meta = {
        **profile.meta,
        "alone": {"F": list(c.forward), "B": [c.backward(s) for s in range(stages)], "step": list(c.optimizer)},
        "timing": (f"CPU time per op in a `ppc run` of {schedule} (V={virtual}, {2 * ranks} microbatches) on "
                   f"{ranks} gloo ranks of this host, median over steps {skip + 1}-{steps}; {costs.threads} "
                   f"thread(s) per rank"),
        "calibration": {"schedule": schedule, "virtual": virtual, "microbatches": 2 * ranks,
                        "measured_step_s": measured_step, "physical_cores": physical,
                        "effective_cores": costs.cores},
        "note": "I and W keep the ratio measured alone; per-layer costs scaled by the in-run / alone ratio "
                f"{ratio:.3f}",
    }
    return dataclasses.replace(profile, stage_costs=costs, layers=layers, meta=meta)


def _run_calibration(request, schedule: str, *, virtual: int, steps: int, timeout: float):
    """`ppc run` of `schedule` on `request.ranks` gloo ranks: (trace events, step times)."""
    ranks = request.ranks
    with tempfile.TemporaryDirectory(prefix="ppc-calibrate-") as tmp:
        trace, metrics = Path(tmp) / "trace.json", Path(tmp) / "metrics.jsonl"
        command = [
            sys.executable, "-m", "ppc", "run", "--model", request.model, "--schedule", schedule,
            "--ranks", str(ranks), "--virtual-stages", str(virtual), "--split", request.by,
            "--microbatches", str(2 * ranks), "--microbatch-size", str(request.microbatch_size),
            "--seq-len", str(request.seq_len), "--steps", str(steps), "--seed", str(request.seed),
            "--device", "cpu", "--quiet", "--trace", str(trace), "--metrics", str(metrics),
        ]
        log.info("calibration run: %s", " ".join(command[2:]))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                  env=_without_launcher_env())
        except subprocess.TimeoutExpired:
            raise CostError(f"profile --ranks: the calibration run took over {timeout:.0f} s") from None
        if done.returncode != 0 or not trace.exists():
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise CostError(f"profile --ranks: the calibration run failed: {lines[-1] if lines else done.returncode}")
        events = json.loads(trace.read_text())["traceEvents"]
        step_times = [json.loads(line)["step_time_s"] for line in metrics.read_text().splitlines() if line.strip()]
    return events, step_times


_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                  "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def _without_launcher_env() -> dict[str, str]:
    """This environment minus torchrun's variables: the calibration run launches its own ranks."""
    return {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}


def fit_cores(costs, predict, measured: float, *, rounds: int = 30):
    """`costs` with the effective cores (at most its own) under which `predict` gives the
    `measured` step time; unchanged when even the physical cores predict it slower."""
    hi = costs.cores
    if predict(costs) >= measured:
        return costs
    lo = hi / 64
    for _ in range(rounds):
        mid = (lo + hi) / 2
        if predict(dataclasses.replace(costs, cores=mid)) > measured:
            lo = mid
        else:
            hi = mid
    return dataclasses.replace(costs, cores=round((lo + hi) / 2, 4))


def _calibration_order(schedule: str, *, ranks: int, virtual: int, microbatches: int):
    from ppc.lang import load_schedule

    return load_schedule(schedule).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)


def _predict(order, costs, profile) -> float:
    """Simulated step time of the calibration run (its transfers carry the profiled bytes)."""
    from ppc.plan.cost_profile import StageCosts
    from ppc.predict import simulate_order

    stage_costs = StageCosts(costs=costs, split=profile.split, params=profile.stage_params or (0,) * costs.stages,
                             output_bytes=profile.stage_output_bytes or (0,) * costs.stages)
    return float(simulate_order(order, costs, stage_costs.stage_graph()).makespan)


def costs_from_trace(events: list[dict], *, stages: int, placement: list[int], skip_steps: int) -> dict:
    """Median CPU seconds per stage (F, B), per stage step (its rank's STEP) and per posted
    transfer group, from a `ppc run --trace` file's events (steps before `skip_steps` left out)."""
    per_op: dict[tuple[str, int], list[float]] = defaultdict(list)
    per_rank_step: dict[int, list[float]] = defaultdict(list)
    posts: list[float] = []
    for event in events:
        args = event.get("args", {})
        if event.get("ph") != "X" or args.get("step", 0) < skip_steps or "cpu_ms" not in args:
            continue
        name, cpu = str(event["name"]).strip(), float(args["cpu_ms"]) / 1e3
        match = compute_slice(name)
        if match:
            per_op[(match[1], match[0])].append(cpu)
        elif "STEP" in name:
            per_rank_step[int(args["rank"])].append(cpu)
        elif not name.startswith("wait") and ("<" in name or ">" in name):
            posts.append(cpu)
    missing = [f"{k}{s}" for s in range(stages) for k in "FB" if not per_op.get((k, s))]
    if missing:
        raise CostError(f"profile --ranks: the calibration trace has no CPU times for {', '.join(missing)}")
    ranks = max(placement) + 1
    return {
        "F": [statistics.median(per_op[("F", s)]) for s in range(stages)],
        "B": [statistics.median(per_op[("B", s)]) for s in range(stages)],
        "step": [statistics.median(per_rank_step[r]) if per_rank_step.get(r) else 0.0 for r in range(ranks)],
        "post": statistics.median(posts) if posts else 0.0,
    }


def _split_step(rank_step: list[float], placement: list[int], alone: tuple[float, ...]) -> tuple[float, ...]:
    """A rank's measured STEP shared among its stages in proportion to their steps alone."""
    out = []
    for s, r in enumerate(placement):
        mine = [t for t, p in zip(alone, placement) if p == r] if alone else []
        total = sum(mine)
        weight = alone[s] / total if total > 0 else 1.0 / placement.count(r)
        out.append(rank_step[r] * weight)
    return tuple(out)

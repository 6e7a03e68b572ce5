"""`ppc plan`: recommend a schedule, split and microbatching from measured costs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ppc.cli.options import add_out, add_ranks, add_virtual

GIB = 2**30


SPLIT_COLUMN = "--split (blocks/stage)"


def split_text(split, units) -> str:
    """A candidate's split as `ppc run --split` takes it (decoder blocks per stage), so the
    table and the printed run line agree; the planned units per stage, marked, when it
    cannot be given as blocks."""
    from ppc.plan.report import block_split

    blocks = block_split(split, units)
    return ",".join(map(str, blocks)) if blocks is not None else "units " + "/".join(map(str, split))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plan",
        help="search schedules, splits and microbatching on measured costs",
        description="Search built-in schedules, virtual stages, microbatch count/size and the stage "
        "split (balanced on the costs), plus a generated zero-bubble policy; print the best "
        "candidates and write the winner as a .ppc file with the `ppc run` command that uses it.",
    )
    p.add_argument("--model", default=None, help="model preset or HF directory (profiled on CPU when --costs is not given)")
    add_ranks(p, help="pipeline ranks R (GPUs); or give --world")
    p.add_argument("--world", type=int, default=None, metavar="N",
                   help="rank the PP x DP factorizations of N ranks instead (R pipeline ranks x D replicas; "
                   "the global batch divides over the replicas; reductions timed by the costs' collective terms)")
    p.add_argument("--global-batch", type=int, required=True, help="samples per optimizer step (all replicas)")
    p.add_argument("--memory-cap", type=float, default=None, metavar="GiB", help="memory per rank")
    p.add_argument("--costs", default=None, help="costs JSON (from `ppc profile` or docs/costs/)")
    p.add_argument("--schedules", default=None, help="comma-separated schedules to try (default: every built-in)")
    add_virtual(p, default="1,2", type=str, help="stages per rank V to try, comma-separated")
    p.add_argument("--microbatch-sizes", default=None, help="sizes to try (default: every divisor of the batch)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length when profiling --model")
    p.add_argument("--no-auto-zb", action="store_true", help="leave out the generated zero-bubble policy")
    p.add_argument("--search", type=float, default=0.0, metavar="S",
                   help="also run `ppc search` for S seconds on the best candidate's configuration (needs OR-Tools)")
    p.add_argument("--top", type=int, default=10, help="candidates to print")
    add_out(p, default="plan.ppc", help="where to write the winning schedule")
    return p


def _ints(text: str | None) -> tuple[int, ...]:
    from ppc.errors import CostError

    if not text:
        return ()
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise CostError(f"expected comma-separated integers, got {text!r}") from None


def _profile(args):
    from ppc.errors import CostError
    from ppc.plan.cost_profile import CostProfile

    if args.costs:
        return CostProfile.load(args.costs)
    if not args.model:
        raise CostError("ppc plan needs --costs FILE.json or --model MODEL to profile")
    from ppc.measure.profile import ProfileRequest, profile_model

    return profile_model(ProfileRequest(model=args.model, stages=None, seq_len=args.seq_len, microbatch_size=1,
                                        device="cpu"))


def run(args) -> int:
    from rich.table import Table

    from ppc.cli.console import make_console
    from ppc.errors import PpcError
    from ppc.plan.planner import PlanRequest, baseline, rank, search, searched
    from ppc.plan.report import run_command, schedule_text

    if (args.ranks is None) == (args.world is None):
        raise PpcError("ppc plan needs --ranks R (one pipeline) or --world N (PP x DP factorizations), not both")
    console = make_console()
    profile = _profile(args)
    cap = args.memory_cap * GIB if args.memory_cap is not None else None
    request = PlanRequest(
        ranks=args.ranks or 1, global_batch=args.global_batch, memory_cap=cap,
        schedules=tuple(s.strip() for s in args.schedules.split(",")) if args.schedules else (),
        virtual=_ints(args.virtual) or (1,), microbatch_sizes=_ints(args.microbatch_sizes),
        auto_zero_bubble=not args.no_auto_zb,
    )
    if args.world is not None:
        return _run_world(args, profile, request, console)
    with console.status("simulating candidates"):
        candidates = search(profile, request)
        base = None
        b0 = profile.microbatch_size
        if profile.stages == args.ranks and args.global_batch % b0 == 0:
            base = baseline(profile, microbatches=args.global_batch // b0, memory_cap=cap)
    if args.search > 0:
        with console.status(f"searching orders for {candidates[0].describe()} ({args.search:g} s)"):
            found = searched(profile, candidates[0], request, time_limit=args.search)
        if found is not None:
            candidates = rank([*candidates, found])
    unit = profile.stage_costs.unit
    table = Table(title=f"ppc plan: {args.ranks} ranks, global batch {args.global_batch}"
                  + (f", cap {args.memory_cap:g} GiB" if cap else "") + " (predicted)")
    units = [u.name for u in profile.layer_units()]
    for column in ("#", "schedule", "V", "M x b", SPLIT_COLUMN, f"step ({unit})", "bubble",
                   "peak mem/rank (GiB)", "fits"):
        table.add_column(column, justify="right" if column not in ("schedule", SPLIT_COLUMN) else "left")
    rows = ([("base", base)] if base else []) + [(str(i + 1), c) for i, c in enumerate(candidates[: args.top])]
    for label, c in rows:
        table.add_row(label, c.schedule + (" (given split)" if c.split_kind == "given" else ""), str(c.virtual),
                      f"{c.microbatches} x {c.microbatch_size}", split_text(c.split, units),
                      f"{c.step_time:.4g}", f"{c.bubble:.1%}", f"{max(c.peak_bytes) / GIB:.2f}",
                      "yes" if c.fits else "NO")
    console.print(table)
    winner = candidates[0]
    out = Path(args.out)
    if winner.csv:  # a searched schedule: its orders, as a compute-only CSV
        out = out.with_suffix(".csv")
        out.write_text(winner.csv)
    else:
        out.write_text(schedule_text(winner))
    console.print(f"winner: {winner.describe()}, predicted step {winner.step_time:.4g} {unit}"
                  + (f" ({1 - winner.step_time / base.step_time:.0%} below the baseline "
                     f"{base.step_time:.4g} {unit})" if base else ""))
    if not winner.fits:
        console.print("[yellow]no candidate fits the memory cap; the winner is the fastest regardless[/]")
    console.print(f"wrote {out}")
    console.print(run_command(winner, schedule_path=out, model=args.model or profile.meta.get("model", "MODEL"),
                              ranks=args.ranks, seq_len=profile.seq_len,
                              units=[u.name for u in profile.layer_units()]))
    return 0


def _run_world(args, profile, request, console) -> int:
    """`--world N`: the best plan of every PP x DP factorization, best first; the winner's
    schedule written and its run line printed."""
    import time

    from rich.table import Table

    from ppc.plan.report import run_command, schedule_text
    from ppc.plan.world import plan_world

    began = time.perf_counter()
    with console.status(f"planning PP x DP factorizations of {args.world} ranks"):
        plan = plan_world(profile, world=args.world, global_batch=args.global_batch, request=request)
    took = time.perf_counter() - began
    unit = profile.stage_costs.unit
    table = Table(title=f"ppc plan: {args.world} ranks (PP x DP), global batch {args.global_batch}"
                  + (f", cap {args.memory_cap:g} GiB" if args.memory_cap else "") + " (predicted)")
    units = [u.name for u in profile.layer_units()]
    for column in ("#", "PP x DP", "schedule", "V", "M x b per replica", SPLIT_COLUMN, f"step ({unit})",
                   f"exposed reduce ({unit})", "bubble", "peak mem/rank (GiB)", "fits"):
        table.add_column(column, justify="left" if column in ("schedule", SPLIT_COLUMN) else "right")
    for i, shape in enumerate(plan.shapes):
        c = shape.best
        if c is None:
            table.add_row(str(i + 1), shape.label, f"[dim]{shape.reason}[/]", *("-",) * 8)
            continue
        table.add_row(str(i + 1), shape.label, c.schedule, str(c.virtual), f"{c.microbatches} x {c.microbatch_size}",
                      split_text(c.split, units), f"{c.step_time:.4g}", f"{c.exposed_reduce:.4g}",
                      f"{c.bubble:.1%}", f"{max(c.peak_bytes) / GIB:.2f}", "yes" if c.fits else "NO")
    console.print(table)
    winner = plan.winner
    best = winner.best
    out = Path(args.out)
    out.write_text(schedule_text(best))
    console.print(f"winner: PP {winner.ranks} x DP {winner.dp}: {best.describe()}, predicted step "
                  f"{best.step_time:.4g} {unit} (exposed gradient reduction {best.exposed_reduce:.4g} {unit}); "
                  f"{len(plan.shapes)} factorizations planned in {took:.1f} s")
    if not best.fits:
        console.print("[yellow]no factorization fits the memory cap; the winner is the fastest regardless[/]")
    console.print(f"wrote {out}")
    console.print(run_command(best, schedule_path=out, model=args.model or profile.meta.get("model", "MODEL"),
                              ranks=winner.ranks, seq_len=profile.seq_len,
                              units=[u.name for u in profile.layer_units()], dp=winner.dp))
    return 0

"""`ppc search`: the fastest per-rank compute orders for given costs under a memory budget."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from ppc.cli.options import add_microbatches, add_out, add_ranks, add_virtual


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "search",
        help="find the fastest compute orders under a per-rank memory budget (OR-Tools CP-SAT)",
        description="Search per-rank compute orders that minimise the simulated step for the given costs, "
        "R, M, V and placement under a per-rank memory budget; warm-started with the best built-in; "
        "prints the step, the proven lower bound and the gap, and writes the orders as a torch "
        "compute-only CSV that every other command accepts. Needs OR-Tools (extra 'search').",
    )
    add_ranks(p, required=True)
    add_microbatches(p, required=True)
    add_virtual(p, default=1, help="stages per rank V")
    p.add_argument("--placement", choices=("loop", "v"), default="loop", help="stage placement")
    p.add_argument("--costs", metavar="SPEC", help="F=1,I=1,W=1[,latency=..] or a costs .json (default: F=I=W=1)")
    p.add_argument("--split", metavar="N,N,..", help="layers per stage: regroup a costs .json that lists "
                   "'layers' (as `ppc plan` prints it); the regrouped costs are written beside the CSV")
    p.add_argument("--memory", metavar="BUDGET", help="per-rank budget: activation sets (4) or bytes "
                   "(12GiB, 500MB; needs activation_bytes in the costs); default: unbounded")
    p.add_argument("--time-limit", type=float, default=30.0, metavar="S", help="solver seconds")
    p.add_argument("--workers", type=int, default=None, help="solver threads (default: cores, at most 8)")
    p.add_argument("--no-split-backward", action="store_true", help="run each backward as one B, not I then W")
    p.add_argument("--recompute", action="store_true", help="let the search recompute forwards (RF): a pair "
                   "holds no activations between its F and its RF, and RF costs a forward")
    add_out(p, default="search.csv", metavar="FILE.csv", help="where to write the orders")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from ppc.errors import PpcError
    from ppc.lang.csv_format import write_csv
    from ppc.search import SearchRequest, parse_budget, search

    if not args.out.endswith(".csv"):
        raise PpcError(f"-o {args.out}: the orders are written as a .csv")
    costs, costs_file = _costs(args)
    request = SearchRequest(
        ranks=args.ranks, microbatches=args.microbatches, virtual=args.virtual, placement=args.placement,
        costs=costs, memory=parse_budget(args.memory, costs) if args.memory else None,
        time_limit=args.time_limit, workers=args.workers, split_backward=not args.no_split_backward,
        recompute=args.recompute,
    )
    with _progress(args.time_limit) as report:
        result = search(request, progress=report)
    out = Path(args.out)
    out.write_text(write_csv(result.order))
    if args.json:
        sys.stdout.write(json.dumps(_to_json(result, request, str(out), costs_file)) + "\n")
        return 0
    _print(result, request, out, costs_file or args.costs)
    return 0


def _costs(args):
    """(CostModel for R * V stages, path of regrouped costs written for --split or None)."""
    from ppc.costs import CostModel
    from ppc.errors import CostError

    stages = args.ranks * args.virtual
    if not args.split:
        return CostModel.load(args.costs, stages), None
    from ppc.plan.cost_profile import CostProfile

    if not args.costs or not args.costs.endswith(".json"):
        raise CostError("--split regroups the layers of a costs .json: give --costs FILE.json")
    try:
        split = tuple(int(n) for n in args.split.split(","))
    except ValueError:
        raise CostError(f"--split: expected comma-separated layer counts, got {args.split!r}") from None
    if len(split) != stages:
        raise CostError(f"--split gives {len(split)} stages, R * V = {stages}")
    profile = CostProfile.load(args.costs)
    if not profile.layers:
        raise CostError(f"--split: {args.costs} lists no 'layers' to regroup")
    costs = profile.grouped(split).costs
    path = Path(args.out).with_suffix(".costs.json")
    path.write_text(json.dumps(costs.to_dict(), indent=2) + "\n")
    return costs, str(path)


class _progress:
    """A rich progress bar on stderr while the solver runs (only on a terminal)."""

    def __init__(self, time_limit: float):
        self.time_limit = time_limit

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            self.bar = None
            return None
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                            transient=True)
        self.task = self.bar.add_task("simulating the built-ins for a warm start", total=None)
        self.began = None
        self.done = threading.Event()
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.bar.start()
        self.ticker.start()
        return self._report

    def _tick(self) -> None:
        while not self.done.wait(0.25):
            if self.began is not None:
                self.bar.update(self.task, completed=min(self.time_limit, time.perf_counter() - self.began))

    def _report(self, elapsed: float, best: float, bound: float) -> None:
        if self.began is None:  # the solver starts: the bar now counts its time limit
            self.began = time.perf_counter() - elapsed
            self.bar.update(self.task, total=self.time_limit)
        gap = (best - bound) / bound if bound > 0 else 0.0
        self.bar.update(self.task, description=f"searching: best ~{best:.5g}, bound {bound:.5g}, gap ~{max(gap, 0):.2%}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.done.set()
            self.ticker.join()
            self.bar.stop()


def _to_json(result, request, schedule: str, costs_file: str | None) -> dict:
    memory = request.memory
    return {
        "makespan": result.makespan,
        "lower_bound": result.lower_bound,
        "gap": result.gap,
        "optimal": result.optimal,
        "status": result.status,
        "source": result.source,
        "solve_seconds": result.wall_time,
        "unit": request.costs.unit,
        "ranks": request.ranks, "microbatches": request.microbatches, "virtual": request.virtual,
        "placement": request.placement,
        "memory": None if memory is None else {"kind": memory.kind, "limit": memory.limit},
        "resolution": {"ticks_per_unit": result.resolution.per_unit, "exact": result.resolution.exact},
        "per_rank": [
            {"rank": s.rank, "busy": s.busy, "idle": s.idle, "bubble": s.bubble,
             "peak_activations": s.peak_activations, "peak_bytes": s.peak_bytes}
            for s in result.timeline.per_rank
        ],
        "builtins": [
            {"schedule": c.name, "makespan": c.makespan, "fits": c.fits,
             "peak_activations": max(a for a, _ in c.peaks)}
            for c in result.builtins
        ],
        "recomputed": sum(a.kind.name == "RF" for row in result.order.compute for a in row),
        "schedule": schedule,
        "costs": costs_file,
    }


def _print(result, request, out: Path, costs_spec: str | None) -> None:
    from rich.table import Table

    from ppc.cli.console import make_console

    console = make_console()
    unit = request.costs.unit
    table = Table(title=f"ppc search: R={request.ranks} M={request.microbatches} V={request.virtual} "
                  f"({request.placement}), memory {request.memory or 'unbounded'}")
    for name in ("rank", "busy", "idle", "bubble", "peak activations", "peak bytes"):
        table.add_column(name, justify="right")
    for s in result.timeline.per_rank:
        table.add_row(str(s.rank), f"{s.busy:.6g}", f"{s.idle:.6g}", f"{s.bubble:.2%}", str(s.peak_activations),
                      "-" if s.peak_bytes is None else f"{s.peak_bytes:,}")
    console.print(table)
    proof = "optimal (proven)" if result.optimal else f"gap {result.gap:.2%} to the lower bound"
    console.print(f"step {result.makespan:.6g} {unit}, lower bound {result.lower_bound:.6g} {unit}: {proof} "
                  f"(solver {result.status} in {result.wall_time:.1f} s)", highlight=False)
    recomputed = sum(a.kind.name == "RF" for row in result.order.compute for a in row)
    if recomputed:
        console.print(f"{recomputed} of {request.microbatches * request.ranks * request.virtual} "
                      "(stage, microbatch) forwards recomputed (RF)", highlight=False)
    if result.source != "search":
        console.print(f"the solver found nothing faster than the warm start: {result.source}", highlight=False)
    fitting = [c for c in result.builtins if c.fits]
    if fitting:
        best = fitting[0]
        console.print(f"best built-in under this budget: {best.name}, step {best.makespan:.6g} {unit} "
                      f"(the search's step is {1 - result.makespan / best.makespan:.1%} shorter)"
                      if best.makespan > 0 else "", highlight=False)
    else:
        console.print("no built-in fits this budget", highlight=False)
    console.print(f"wrote {out}; check: ppc simulate {out}" + (f" --costs {costs_spec}" if costs_spec else ""),
                  highlight=False)

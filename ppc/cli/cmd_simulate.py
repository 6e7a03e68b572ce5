"""`ppc simulate`: lower, validate and time schedules; bubble, memory, Gantt, traces."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from ppc.cli.model_options import add_model_arguments, build_model_split, flop_costs
from ppc.cli.options import add_microbatches, add_out, add_ranks, add_virtual
from ppc.errors import PpcError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "simulate",
        help="validate and time schedules: bubble, peak memory, critical path, pictures",
        description=__doc__,
    )
    parser.add_argument(
        "schedules",
        metavar="SCHEDULE",
        nargs="+",
        help="built-in name, .ppc path, .csv path or a compiled program .json (ppc compile "
        "--format json); NAME:V sets that schedule's V (for --compare)",
    )
    add_ranks(parser, help="pipeline ranks R (a CSV gives its own)")
    add_microbatches(parser)
    add_virtual(parser)
    parser.add_argument("--placement", choices=("loop", "v"), help="override the schedule's placement")
    parser.add_argument(
        "--costs",
        metavar="SPEC",
        help="F=1,I=1,W=1[,latency=..,bandwidth=..] or a costs .json file (default: F=I=W=1)",
    )
    parser.add_argument(
        "--dp", type=int, default=1, metavar="D",
        help="pipeline replicas (data parallelism, world = D x R): one pipeline is simulated, each "
        "stage's gradients reduced across the D replicas by the costs' collective terms (default 1)",
    )
    parser.add_argument("--zero", type=int, choices=(0, 1), default=0,
                        help="1: reduce-scatter gradients (ZeRO-1), all-gather parameters after the step")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_out(parser, help="write the timeline: .svg/.png/.html picture or .json trace")
    parser.add_argument("--compare", action="store_true", help="compare the schedules side by side")
    parser.add_argument("--width", type=int, default=None, help="terminal Gantt width in cells")
    parser.add_argument(
        "--against",
        metavar="TRACE",
        help="compare with a trace written by `ppc run --trace TRACE.json` (costs in seconds)",
    )
    add_model_arguments(parser)
    return parser


def split_virtual(spec: str, default: int | None) -> tuple[str, int | None]:
    """`interleaved_1f1b:2` -> ("interleaved_1f1b", 2); without a suffix, `default`."""
    name, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit():
        return name, int(tail)
    return spec, default


def _is_file(spec: str | None) -> bool:
    return spec is not None and (spec.endswith(".json") or Path(spec).is_file())


def per_model(costs, virtual: int):
    """Scale scalar costs for a split into V stages per rank: each stage is 1/V of the
    one-stage-per-rank split, so schedules with different V compare on the same model."""
    scale = 1.0 / virtual
    return dataclasses.replace(
        costs,
        forward=tuple(c * scale for c in costs.forward),
        backward_input=tuple(c * scale for c in costs.backward_input),
        backward_weight=tuple(c * scale for c in costs.backward_weight),
        activation_bytes=tuple(round(b * scale) for b in costs.activation_bytes),
    )


def simulate_schedule(spec: str, args: argparse.Namespace):
    """Expand one schedule and predict its step (ppc.predict, as plan does)."""
    from ppc.costs import CostModel
    from ppc.lang import load_schedule
    from ppc.plan.cost_profile import costs_and_graph
    from ppc.predict import simulate_order

    name, virtual = split_virtual(spec, args.virtual)
    if name.endswith(".json"):
        return _simulate_program_file(name, args)
    order = load_schedule(name).expand(
        ranks=args.ranks, microbatches=args.microbatches, virtual=virtual, placement=args.placement
    )
    graph = None
    if args.model:  # real transfer and activation bytes; FLOP-estimated costs unless given
        split = build_model_split(args, order)
        graph = split.graph
        if not graph.param_bytes:  # fp32 gradients of each stage's parameters
            graph = dataclasses.replace(graph, param_bytes=tuple(GRAD_BYTES * s.params for s in split.stages))
        costs = CostModel.load(args.costs, order.stages) if args.costs else flop_costs(split)
        if not costs.activation_bytes:
            costs = dataclasses.replace(costs, activation_bytes=tuple(graph.activation_bytes))
    else:
        costs, graph = costs_and_graph(args.costs, order.stages)
        if args.compare and order.virtual > 1 and not _is_file(args.costs):
            costs = per_model(costs, order.virtual)
    return simulate_order(order, costs, graph, dp=args.dp, zero=args.zero)


GRAD_BYTES = 4
"""Bytes per parameter a gradient reduction moves (fp32 gradients)."""


def _simulate_program_file(path: str, args: argparse.Namespace):
    """Time a compiled program as written (`ppc compile --format json`), validated first."""
    from ppc.costs import CostModel
    from ppc.errors import ValidationError
    from ppc.inputs import read_json
    from ppc.ir.program import program_file
    from ppc.sim.timeline import simulate
    from ppc.verify.program import check

    data = read_json(path, error=ValidationError, what="compiled program", limit=2**30)
    program, graph = program_file(data, path)
    costs = CostModel.load(args.costs, program.stages)
    return simulate(program, costs, graph=graph, checked=check(program, graph), dp=args.dp, zero=args.zero)


def run(args: argparse.Namespace) -> int:
    import gc

    if args.out:
        _check_out(args.out)
    if args.dp < 1:
        raise PpcError(f"--dp needs at least 1 replica, got {args.dp}")
    with _progress() as say:
        gc.disable()  # millions of small acyclic objects: the cyclic collector only costs time
        try:
            timelines = []
            for spec in args.schedules:
                say(f"simulating {spec}")
                timelines.append(simulate_schedule(spec, args))
        finally:
            gc.enable()
        if len(timelines) > 1 and not args.compare:
            raise PpcError("several schedules given: add --compare to see them side by side")
        if args.against and args.compare:
            raise PpcError("--against compares one schedule with a trace: drop --compare")
        comparison = _against(timelines[0], args.against) if args.against else None
        if args.out:
            say(f"writing {args.out}")
            _write_out(timelines, args.out, comparison, against=args.against)
    if args.out:
        _stderr().print(f"wrote {args.out}", highlight=False, soft_wrap=True)
    if args.json:
        from ppc.sim.report import summary, to_json

        doc = [summary(t) for t in timelines] if args.compare else to_json(timelines[0])
        if comparison is not None:
            doc["against"] = _against_json(comparison, args.against, timelines[0].costs.unit)
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    from ppc.cli.console import make_console

    console = make_console()
    if args.compare:
        console.print(_compare_table(timelines))
        if any(t.program.virtual > 1 for t in timelines) and not _is_file(args.costs):
            console.print(
                "note: the same model in every column: with V stages per rank each stage costs 1/V "
                "of the given costs (and 1/V of the activation bytes); 'peak sets' counts "
                "(stage, microbatch) sets, each 1/V as large with V > 1, and 'peak (V=1 sets)' "
                "counts them in one unit: sets / V"
            )
        return 0
    timeline = timelines[0]
    console.print(_rank_table(timeline) if comparison is None else _against_table(comparison, args.against))
    from ppc.sim.gantt import gantt

    console.print(gantt(timeline, width=args.width or max(20, console.width - 10)), soft_wrap=True)
    for note in timeline.program.notes:
        console.print(f"note: {note}")
    costs = timeline.costs
    if costs.shares_cores(timeline.program.ranks):
        console.print(f"note: {timeline.program.ranks} ranks share {costs.cores:g} cores of one host "
                      f"({costs.threads} thread(s) each): ops slow down while more ranks compute than the cores hold",
                      highlight=False)
    if timeline.dp > 1:
        console.print(_reduce_note(timeline), highlight=False)
    if comparison is not None:
        console.print(
            f"step time: predicted {comparison.predicted_makespan:.4g} s, measured "
            f"{comparison.measured_makespan:.4g} s, prediction error {comparison.error:+.1%}",
            highlight=False,
        )
        if timeline.costs.unit != "s":
            console.print(f"note: the costs are in {timeline.costs.unit}, not seconds: give --costs from "
                          "`ppc profile` for a meaningful error")
    return 0


def _against(timeline, trace: str):
    """Compare the timeline with the step of `trace` that `compare_trace` picks."""
    from ppc.plan.compare_trace import compare, load_trace

    events = load_trace(trace)
    ranks = {int(e.get("args", {}).get("rank", e.get("pid", 0))) for e in events}
    if ranks != set(range(timeline.program.ranks)):
        raise PpcError(
            f"--against {trace}: the trace has ranks {sorted(ranks)}, the schedule has "
            f"{timeline.program.ranks} (give the --ranks of the run)"
        )
    return compare(timeline, events)


def _against_json(comparison, trace: str, unit: str) -> dict:
    def side(s) -> dict:
        return {"busy": s.busy, "idle": s.idle, "bubble": s.bubble}

    return {
        "trace": trace,
        "unit": unit,
        "predicted_makespan": comparison.predicted_makespan,
        "measured_makespan": comparison.measured_makespan,
        "error": comparison.error,
        "per_rank": [
            {"rank": r, "predicted": side(p), "measured": side(m)}
            for r, (p, m) in enumerate(zip(comparison.predicted, comparison.measured))
        ],
    }


def _against_table(comparison, trace: str):
    from rich.table import Table

    from ppc.plan.compare_trace import render_rows

    title = (
        f"predicted vs measured ({trace}): makespan {comparison.predicted_makespan:.4g} s "
        f"vs {comparison.measured_makespan:.4g} s"
    )
    table = Table(title=title)
    for name in ("rank", "pred. busy", "pred. idle", "pred. bubble", "meas. busy", "meas. idle", "meas. bubble"):
        table.add_column(name, justify="right")
    for row in render_rows(comparison):
        table.add_row(*row)
    return table


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def _progress():
    """On a terminal, a spinner on stderr with the current step and the time it has taken;
    yields `say(text)`, which names the step."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = _stderr()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("", total=None)
        yield lambda text: progress.update(task, description=text)


def _write_out(timelines, out: str, comparison=None, *, against: str | None = None) -> None:
    if out.endswith(".json"):
        from ppc.sim.trace import write_trace

        if len(timelines) > 1:
            raise PpcError("--out trace.json takes one schedule")
        measured = None
        if against:  # the compared step beside the prediction, in each rank's process
            from ppc.plan.compare_trace import compared_step, load_trace

            measured = compared_step(load_trace(against))
        write_trace(timelines[0], out, measured=measured)
        return
    from ppc.sim.plot import draw

    draw(timelines, out, measured=comparison)


def _check_out(out: str) -> None:
    """Fail before any work on an --out whose format is unknown."""
    formats = (".json", ".svg", ".png", ".html")
    if not out.endswith(formats):
        raise PpcError(f"--out {out}: expected a file ending in {', '.join(formats)}")


def _rank_table(timeline):
    from rich.table import Table

    program = timeline.program
    title = (
        f"{program.schedule}: R={program.ranks} M={program.microbatches} S={program.stages}  "
        f"makespan {timeline.makespan:g} {timeline.costs.unit}  bubble {timeline.bubble:.2%}"
    )
    table = Table(title=title)
    dp = timeline.dp > 1
    for name in ("rank", "busy", "idle", "bubble", "peak activations", "peak bytes") + (
            ("reduce", "exposed reduce") if dp else ()):
        table.add_column(name, justify="right")
    for s in timeline.per_rank:
        table.add_row(
            str(s.rank), f"{s.busy:g}", f"{s.idle:g}", f"{s.bubble:.2%}", str(s.peak_activations),
            "-" if s.peak_bytes is None else f"{s.peak_bytes:,}",
            *((f"{s.reduce:g}", f"{s.exposed_reduce:g}") if dp else ()),
        )
    return table


def _reduce_note(timeline) -> str:
    program, costs = timeline.program, timeline.costs
    reduces = [s for s in timeline.spans() if s.instruction.op.name == "REDUCE_GRAD"]
    sent = sum(s.instruction.bytes for s in reduces)
    kind = "reduce-scatter (ZeRO-1)" if timeline.zero else "all-reduce"
    return (f"note: DP {timeline.dp} x PP {program.ranks} = {timeline.dp * program.ranks} ranks, one pipeline "
            f"simulated: {len(reduces)} REDUCE_GRAD ({kind}, ring) of {sent:,} gradient bytes in all; "
            f"exposed reduction up to {timeline.exposed_reduce:g} {costs.unit}"
            + ("" if sent else "; no gradient bytes known: give --model or the costs' param_bytes"))


def _compare_table(timelines):
    from rich.table import Table

    from ppc.sim.report import summary

    table = Table(title="schedules side by side")
    columns = ("schedule", "R", "M", "S", "makespan", "bubble", "peak sets", "peak (V=1 sets)", "peak bytes")
    for name in columns:
        table.add_column(name, justify="left" if name == "schedule" else "right")
    for t in timelines:
        row = summary(t)
        table.add_row(
            row["schedule"], str(row["ranks"]), str(row["microbatches"]), str(row["stages"]),
            f"{row['makespan']:g}", f"{row['bubble']:.2%}", str(row["peak_activations"]),
            f"{row['peak_stage_equivalents']:g}", "-" if row["peak_bytes"] is None else f"{row['peak_bytes']:,}",
        )
    return table

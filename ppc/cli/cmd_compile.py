"""`ppc compile`: expand a schedule to per-rank compute orders (text, JSON or torch CSV).

With --model the orders are lowered against the model's split (else a chain of stages):
the JSON also holds the whole program (each rank's instructions, transfers with tensor
specs) and its stage graph, which `ppc simulate FILE.json` reads back.
"""

from __future__ import annotations

import argparse
import json
import sys

from ppc.cli.model_options import add_model_arguments, build_model_split
from ppc.cli.options import add_microbatches, add_ranks, add_virtual
from ppc.compiler import compile_program
from ppc.errors import ScheduleError
from ppc.ir.program import format_program
from ppc.ir.stage_graph import synthetic_chain
from ppc.lang import load_schedule
from ppc.lang.csv_format import write_csv
from ppc.lang.listing import format_listing, to_json_record


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compile",
        help="expand a schedule into per-rank compute orders",
        description=__doc__,
    )
    parser.add_argument("schedule", metavar="SCHEDULE", help="built-in name, .ppc path or .csv path")
    add_ranks(parser, help="pipeline ranks R (a CSV gives its own)")
    add_microbatches(parser)
    add_virtual(parser)
    parser.add_argument("--placement", choices=("loop", "v"), help="override the schedule's placement")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="set a schedule parameter"
    )
    parser.add_argument("--format", choices=("text", "json", "csv"), default="text",
                        help="per-rank listing, JSON (orders, program, stage graph) or torch's CSV")
    add_model_arguments(parser)
    return parser


def parse_params(items: list[str]) -> dict[str, int]:
    """`["extra=1"]` -> `{"extra": 1}`; raises ScheduleError on malformed items."""
    params: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            params[name.strip()] = int(value)
        except ValueError:
            raise ScheduleError(f"--param {item!r}: expected NAME=INTEGER, e.g. --param extra=1") from None
    return params


def run(args: argparse.Namespace) -> int:
    schedule = load_schedule(args.schedule)
    order = schedule.expand(
        ranks=args.ranks,
        microbatches=args.microbatches,
        virtual=args.virtual,
        placement=args.placement,
        params=parse_params(args.param),
    )
    graph = build_model_split(args, order).graph if args.model else None
    # lower + validate (on the synthetic chain without a model): complete, deadlock-free
    program = compile_program(order, graph)
    if args.format == "json":
        record = to_json_record(order)
        if graph is not None:
            record["model"] = args.model
            record["instructions"] = [[i.to_json() for i in row] for row in program.instructions]
            record["notes"] = list(program.notes)
        # the whole program and its stage graph: `ppc simulate FILE.json` reads them back
        record["program"] = program.to_json()
        record["graph"] = (graph or synthetic_chain(order.stages)).to_json()
        sys.stdout.write(json.dumps(record) + "\n")
    elif args.format == "csv":
        sys.stdout.write(write_csv(order))
    else:
        sys.stdout.write(format_listing(order))
        if graph is not None:
            sys.stdout.write(format_program(program))
    return 0

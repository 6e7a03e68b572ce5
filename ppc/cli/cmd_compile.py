"""`ppc compile`: expand a schedule to per-rank compute orders (text, JSON or torch CSV)."""

from __future__ import annotations

import argparse
import json
import sys

from ppc.compiler import compile_program
from ppc.errors import ScheduleError
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
    parser.add_argument("-r", "--ranks", type=int, help="pipeline ranks R (a CSV gives its own)")
    parser.add_argument("-m", "--microbatches", type=int, help="microbatches M per step")
    parser.add_argument("--virtual", type=int, default=None, help="stages per rank V (default 1)")
    parser.add_argument("--placement", choices=("loop", "v"), help="override the schedule's placement")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="set a schedule parameter"
    )
    parser.add_argument("--format", choices=("text", "json", "csv"), default="text")
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
    compile_program(order)  # lower + validate on the synthetic chain: complete, deadlock-free
    if args.format == "json":
        sys.stdout.write(json.dumps(to_json_record(order)) + "\n")
    elif args.format == "csv":
        sys.stdout.write(write_csv(order))
    else:
        sys.stdout.write(format_listing(order))
    return 0

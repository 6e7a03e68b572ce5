"""The `ppc` command line: one module per subcommand, errors as one line and exit 2.

Each subcommand module defines `add_parser(subparsers)` and `run(args) -> int`; it
must not import torch at module level (compile and simulate stay torch-free).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ppc import __version__
from ppc.cli.options import Parser
from ppc.errors import PpcError
from ppc.ir.ops import load_plugins

COMMANDS: tuple[str, ...] = (
    # subcommand name -> module ppc.cli.cmd_<name>
    "schedules",
    "compile",
    "simulate",
    "profile",
    "plan",
    "search",
    "run",
    "inspect",
)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppc",
        description="Pipeline-parallel schedule compiler, simulator and executor for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"ppc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"ppc.cli.cmd_{name}")
        sub_parser = module.add_parser(sub)
        sub_parser.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        sys.exit(EXIT_USAGE)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        load_plugins()
        code = args.handler(args)
    except PpcError as error:
        print(f"ppc: {error}" if error.pos is None else str(error), file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("ppc: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)

"""One vocabulary of flags for every subcommand: the same idea has the same spelling.

`-r/--ranks`, `-m/--microbatches`, `-V/--virtual-stages` (old spelling `--virtual`),
`--split`, `-o/--out` (old spelling `--output`). `--virtual-stages` exists because
torchrun refuses `--virtual` before ppc starts (it is a prefix of torchrun's own
`--virtual-local-rank`); `-V` and `--virtual-stages` work everywhere, torchrun included.
Every subcommand shows each flag's default in `--help`.
"""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "Parser", "add_microbatches", "add_out", "add_ranks", "add_virtual"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults (not for flags without one) and keeps the description's lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """The subcommands' parser: defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_ranks(parser, *, required: bool = False, default: int | None = None,
              help: str = "pipeline ranks R") -> None:
    parser.add_argument("-r", "--ranks", type=int, required=required, default=default, help=help)


def add_microbatches(parser, *, required: bool = False, default: int | None = None,
                     help: str = "microbatches M per step") -> None:
    parser.add_argument("-m", "--microbatches", type=int, required=required, default=default, help=help)


def add_virtual(parser, *, default=None, type=int,
                help: str = "stages per rank V (default: the schedule's own, else 1)") -> None:
    parser.add_argument("-V", "--virtual-stages", "--virtual", dest="virtual", type=type, default=default,
                        metavar="V", help=help)


def add_out(parser, *, required: bool = False, default: str | None = None, help: str,
            metavar: str = "FILE") -> None:
    parser.add_argument("-o", "--out", "--output", dest="out", required=required, default=default,
                        metavar=metavar, help=help)

"""`ppc schedules`: list the built-in schedules with their files and doc lines."""

from __future__ import annotations

import argparse

from rich.table import Table

from ppc.cli.console import make_console
from ppc.lang import builtin_schedules, load_schedule


def add_parser(subparsers) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        "schedules", help="list the built-in schedules", description=__doc__
    )


def run(args: argparse.Namespace) -> int:
    table = Table(title="built-in schedules", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("file", overflow="fold")
    for name, path in builtin_schedules().items():
        table.add_row(name, load_schedule(name).doc, str(path))
    make_console().print(table)
    return 0

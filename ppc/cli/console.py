"""The rich console every command prints through.

Piped into a file or a log, rich falls back to 80 columns and wraps wide tables into
unreadable cells; there the console is 160 wide instead (COLUMNS still wins).
"""

from __future__ import annotations

import os
import sys

__all__ = ["make_console"]

_PIPED_WIDTH = 160


def make_console(**kwargs):
    from rich.console import Console

    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=_PIPED_WIDTH if piped else None, **kwargs)

"""One error family for everything a user can cause.

The CLI prints `str(error)` and exits with code 2; a user never sees a traceback
for their own mistake.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class SourcePos:
    """A position in a schedule file (1-based line and column)."""

    path: str
    line: int
    col: int
    source_line: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    def excerpt(self) -> str:
        """The source line and a caret under the column, or "" without a source."""
        if not self.source_line:
            return ""
        return f"\n    {self.source_line}\n    {' ' * (self.col - 1)}^"


class PpcError(Exception):
    """Base of all user-facing errors: a one-line message, plus a source excerpt."""

    def __init__(self, message: str, *, pos: SourcePos | None = None):
        self.message = message
        self.pos = pos
        super().__init__(self.render())

    def render(self) -> str:
        if self.pos is None:
            return self.message
        return f"{self.pos}: {self.message}{self.pos.excerpt()}"


class ScheduleError(PpcError):
    """A schedule file that does not parse, or fails a constraint, or yields bad orders."""


class ConstraintError(ScheduleError):
    """A `require` of the schedule does not hold for the given R, M, V."""


class ValidationError(PpcError):
    """A program or compute order that is incomplete, duplicated or out of order."""


class DeadlockError(ValidationError):
    """The per-rank programs wait on each other in a cycle."""


class CostError(PpcError):
    """A costs file or --costs string that cannot be read."""


class ModelError(PpcError):
    """A model that cannot be found, traced or split."""


class RunError(PpcError):
    """A training run that cannot start or that failed on some rank."""

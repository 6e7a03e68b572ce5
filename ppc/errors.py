"""One error family for everything a user can cause.

The CLI prints `str(error)` and exits with code 2; a user never sees a traceback
for their own mistake.
"""

from __future__ import annotations

from dataclasses import dataclass

EXCERPT_WIDTH = 100
"""Widest source excerpt under an error (a longer line is cut around the column)."""


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
        """The source line and a caret under the column, or "" without a source; a long
        line is cut to EXCERPT_WIDTH characters around the column."""
        if not self.source_line:
            return ""
        line, caret = self.source_line, self.col - 1
        if len(line) > EXCERPT_WIDTH:
            start = max(0, min(caret - EXCERPT_WIDTH // 2, len(line) - EXCERPT_WIDTH))
            head = "..." if start else ""
            tail = "..." if start + EXCERPT_WIDTH < len(line) else ""
            line = head + line[start:start + EXCERPT_WIDTH] + tail
            caret += len(head) - start
        return f"\n    {line}\n    {' ' * caret}^"


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


class InputError(PpcError):
    """A user file that cannot be read, is too large, or is not valid UTF-8."""

"""torch.distributed.pipelining's compute-only CSV: one row per rank, one action per cell.

Cells hold actions like `0F3`, `2I1`, `1W0`, `3B2`; blank cells are allowed and skipped.
The CSV carries no R/M/V: ranks = rows, stages = max stage + 1, microbatches = max
microbatch + 1, and the placement is read from which row runs each stage. Blank lines at
the end of the file are not ranks. Indices are checked against the number of actions
before anything is sized by them (N actions cannot name stage or microbatch N).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ppc.errors import ScheduleError, SourcePos
from ppc.inputs import read_text
from ppc.ir.order import Action, ComputeOrder
from ppc.lang.limits import MAX_OPS_X_RANKS, MAX_ORDER_OPS
from ppc.verify.order import check_order

_MAX_CELL = 40
"""Longest action cell (`123456F789` is 10 characters, `(0F7;7B3)OVERLAP_F_B` 20; padding
is allowed)."""


def write_csv(order: ComputeOrder) -> str:
    """The order as CSV text, exactly as torch's `_dump_csv` writes it."""
    out = io.StringIO()
    writer = csv.writer(out)
    for row in order.compute:
        writer.writerow([str(a) for a in row])
    return out.getvalue()


def read_csv(path: str | Path) -> ComputeOrder:
    """Read a compute-only CSV into a checked ComputeOrder (raises ScheduleError)."""
    path = Path(path)
    text = read_text(path, error=ScheduleError, what="CSV file")
    return parse_csv(text, str(path), name=path.stem)


def parse_csv(text: str, path: str = "<csv>", *, name: str = "csv") -> ComputeOrder:
    """Parse CSV text; `path` is used in error positions."""
    lines = [line.rstrip("\r") for line in text.split("\n")]  # as the csv reader counts them
    compute, origins = [], []
    count = 0
    for line_no, cells in _rows(text, path, lines):
        if len(compute) >= MAX_ORDER_OPS:
            raise ScheduleError(f"{path}: more than {MAX_ORDER_OPS:,} rows; an order has one per rank")
        row, row_origins = _parse_row(cells, path, line_no, _source(lines, line_no))
        compute.append(tuple(row))
        origins.append(tuple(row_origins))
        count += len(row)
        if count > MAX_ORDER_OPS:
            raise ScheduleError(f"{path}: more than {MAX_ORDER_OPS:,} actions, the most an order holds")
    while compute and not compute[-1]:
        compute.pop()  # trailing blank lines are not ranks
        origins.pop()
    actions = [a for row in compute for a in row]
    if not actions:
        raise ScheduleError(f"{path}: the CSV holds no actions")
    for rank, row in enumerate(compute):
        if not row:
            raise ScheduleError(f"{path}: row {rank} holds no actions, but every rank runs a stage")
    _check_indices(compute, origins, len(actions), path)
    placement = _placement(compute, path)
    order = ComputeOrder(
        schedule=name,
        ranks=len(compute),
        stages=len(placement),
        microbatches=max(a.mb for a in actions) + 1,
        placement=placement,
        compute=tuple(compute),
        origins=tuple(origins),
    )
    check_order(order, missing_pos=SourcePos(path=path, line=1, col=1))
    return order


def _rows(text: str, path: str, lines: list[str]):
    """(line number, cells) of each CSV row; a malformed CSV raises a positioned error."""
    reader = csv.reader(io.StringIO(text))
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            line = max(reader.line_num, 1)
            pos = SourcePos(path=path, line=line, col=1, source_line=_source(lines, line))
            raise ScheduleError(f"not a readable CSV: {error}", pos=pos) from None
        yield reader.line_num, cells


def _source(lines: list[str], line: int) -> str:
    return lines[line - 1] if 0 < line <= len(lines) else ""


def _parse_row(cells: list[str], path: str, line_no: int, source: str):
    row, origins, col = [], [], 1
    for cell in cells:
        pos = SourcePos(path=path, line=line_no, col=col, source_line=source)
        col += len(cell) + 1
        if not cell.strip():
            continue
        if len(cell) > _MAX_CELL:
            raise ScheduleError(
                f"a cell of {len(cell)} characters is not an action like '2F0'", pos=pos
            )
        try:
            row.append(Action.parse(cell))
        except ScheduleError as error:
            raise ScheduleError(
                f"{error.message} (a compute-only CSV holds only F, B, I, W actions)", pos=pos
            ) from None
        origins.append(pos)
    return row, origins


def _check_indices(compute, origins, count: int, path: str) -> None:
    """Refuse an order too large, and indices no complete order of `count` actions has."""
    if count > MAX_ORDER_OPS or count * len(compute) > MAX_OPS_X_RANKS:
        raise ScheduleError(
            f"{path}: {count:,} actions on {len(compute):,} ranks; an order holds at most "
            f"{MAX_ORDER_OPS:,} ops and {MAX_OPS_X_RANKS:,} ops x ranks"
        )
    for rank, row in enumerate(compute):  # every index below `count` keeps _placement linear
        for index, action in enumerate(row):
            for field, value in (("stage", action.stage), ("microbatch", action.mb)):
                if value >= count:
                    raise ScheduleError(
                        f"{action} names {field} {value}, but the CSV holds only {count} actions",
                        pos=origins[rank][index],
                    )


def _placement(compute: list[tuple[Action, ...]], path: str) -> tuple[int, ...]:
    owner: dict[int, int] = {}
    for rank, row in enumerate(compute):
        for action in row:
            first = owner.setdefault(action.stage, rank)
            if first != rank:
                raise ScheduleError(
                    f"{path}: stage {action.stage} has actions on rows {first} and {rank}; "
                    "a stage belongs to one rank"
                )
    stages = max(owner) + 1
    absent = [s for s in range(stages) if s not in owner]
    if absent:
        raise ScheduleError(f"{path}: stage {absent[0]} has no actions, so its rank is unknown")
    return tuple(owner[s] for s in range(stages))

"""torch.distributed.pipelining's compute-only CSV: one row per rank, one action per cell.

Cells hold actions like `0F3`, `2I1`, `1W0`, `3B2`; blank cells are allowed and skipped.
The CSV carries no R/M/V: ranks = rows, stages = max stage + 1, microbatches = max
microbatch + 1, and the placement is read from which row runs each stage.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ppc.errors import ScheduleError, SourcePos
from ppc.ir.order import Action, ComputeOrder
from ppc.verify.order import check_order


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
    try:
        text = path.read_text()
    except OSError as error:
        raise ScheduleError(f"cannot read {path}: {error.strerror}") from None
    return parse_csv(text, str(path), name=path.stem)


def parse_csv(text: str, path: str = "<csv>", *, name: str = "csv") -> ComputeOrder:
    """Parse CSV text; `path` is used in error positions."""
    lines = text.splitlines()
    compute, origins = [], []
    for line_no, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        row, row_origins = _parse_row(cells, path, line_no, lines[line_no - 1] if lines else "")
        compute.append(tuple(row))
        origins.append(tuple(row_origins))
    actions = [a for row in compute for a in row]
    if not actions:
        raise ScheduleError(f"{path}: the CSV holds no actions")
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


def _parse_row(cells: list[str], path: str, line_no: int, source: str):
    row, origins, col = [], [], 1
    for cell in cells:
        pos = SourcePos(path=path, line=line_no, col=col, source_line=source)
        col += len(cell) + 1
        if not cell.strip():
            continue
        try:
            row.append(Action.parse(cell))
        except ScheduleError as error:
            raise ScheduleError(
                f"{error.message} (a compute-only CSV holds only F, B, I, W actions)", pos=pos
            ) from None
        origins.append(pos)
    return row, origins


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

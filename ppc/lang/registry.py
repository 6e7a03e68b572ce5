"""Finding schedules: built-in names, .ppc paths and torch compute-only .csv paths."""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ppc.errors import ScheduleError
from ppc.inputs import read_text
from ppc.ir.order import ComputeOrder
from ppc.lang import ast
from ppc.lang import placement as placements
from ppc.lang.csv_format import read_csv
from ppc.lang.expand import PLACEMENT_OVERRIDES, default_virtual, expand
from ppc.lang.limits import MAX_SCHEDULE_BYTES
from ppc.lang.parser import parse


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A loaded schedule: a parsed .ppc definition, or a fixed order read from a CSV."""

    name: str
    doc: str
    path: Path
    definition: ast.ScheduleDef | None = None
    """The parsed .ppc file (None for a CSV)."""
    fixed: ComputeOrder | None = None
    """The order read from a CSV (None for a .ppc file)."""

    def expand(
        self,
        *,
        ranks: int | None,
        microbatches: int | None,
        virtual: int | None = None,
        placement: str | None = None,
        params: Mapping[str, int] | None = None,
    ) -> ComputeOrder:
        """The compute order for R, M, V (V None: the schedule's `virtual N`, else 1; for a CSV:
        checks that given sizes agree)."""
        if self.fixed is not None:
            return self._check_fixed(ranks, microbatches, virtual, placement, params)
        if ranks is None or microbatches is None:
            raise ScheduleError(f"schedule {self.name} needs --ranks and --microbatches")
        return expand(
            self.definition,
            ranks=ranks,
            microbatches=microbatches,
            virtual=virtual,
            placement_kind=placement,
            params=params,
        )

    @property
    def default_virtual(self) -> int:
        """The V used when none is given: a CSV's own, a .ppc file's `virtual N`, else 1."""
        if self.fixed is not None:
            return self.fixed.virtual
        return default_virtual(self.definition)

    def _check_fixed(self, ranks, microbatches, virtual, placement, params) -> ComputeOrder:
        order = self.fixed
        given = (
            ("ranks", "ranks", ranks, order.ranks),
            ("microbatches", "microbatches", microbatches, order.microbatches),
            ("virtual", "stages per rank", virtual, order.virtual),
        )
        for flag, label, value, actual in given:
            if value is not None and value != actual:
                raise ScheduleError(f"{self.path} has {actual} {label} but --{flag} {value} was given")
        if placement is not None:
            kind = PLACEMENT_OVERRIDES.get(placement, placement)
            wanted = {"loop": placements.loop, "vshape": placements.vshape}.get(kind)
            if wanted is None or wanted(order.ranks, order.virtual) != order.placement:
                raise ScheduleError(
                    f"{self.path} has placement {list(order.placement)}, not --placement {placement}"
                )
        if params:
            raise ScheduleError(f"{self.path} is a CSV and takes no --param")
        return dataclasses.replace(order, schedule=self.name)


def builtin_schedules() -> dict[str, Path]:
    """Built-in schedule name -> its .ppc file, sorted by name."""
    return dict(_builtin_files())


@functools.cache
def _builtin_files() -> tuple[tuple[str, Path], ...]:
    root = importlib.resources.files("ppc.schedules")
    files = sorted((Path(str(f)) for f in root.iterdir() if f.name.endswith(".ppc")), key=str)
    return tuple((f.stem, f) for f in files)


def load_schedule(spec: str | Path) -> Schedule:
    """A built-in name, a .ppc path or a .csv path -> Schedule (raises ScheduleError)."""
    text = str(spec)
    if text.endswith(".csv"):
        order = read_csv(text)
        return Schedule(name=Path(text).stem, doc="", path=Path(text), fixed=order)
    builtins = builtin_schedules()
    if text in builtins:
        return _load_ppc(builtins[text])
    if text.endswith(".ppc") or "/" in text:
        return _load_ppc(Path(text))
    known = ", ".join(builtins)
    raise ScheduleError(f"unknown schedule {text!r}; built-in schedules: {known} (or a .ppc/.csv path)")


def _load_ppc(path: Path) -> Schedule:
    source = read_text(path, error=ScheduleError, what="schedule file", limit=MAX_SCHEDULE_BYTES)
    definition = parse(source, str(path))
    return Schedule(name=definition.name, doc=definition.doc, path=path, definition=definition)

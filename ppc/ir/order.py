"""Compute actions and compute orders: the output of schedule expansion.

An action prints in torch.distributed.pipelining's syntax (`2F0` is stage 2, forward,
microbatch 0) and parses back, so compute orders move between ppc and torch. Its kind
is a compute row of the op table (ppc.ir.ops).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from ppc.errors import ScheduleError, SourcePos
from ppc.ir import ops
from ppc.ir.ops import Op, OpKind

Kind = Op
"""Compute kinds are op-table rows: `Kind.F` is `Op.F`."""


@lru_cache(maxsize=1)
def _action_re() -> re.Pattern:
    names = sorted((k.name for k in ops.compute_kinds() if not k.parts), key=len, reverse=True)
    return re.compile(r"^\s*(\d+)\s*(" + "|".join(map(re.escape, names)) + r")\s*(\d+)\s*$")


_COMPOSITE_RE = re.compile(r"^\s*\(([^()]*)\)\s*([A-Za-z_]+)\s*$")


ops.on_change(_action_re.cache_clear)


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """One compute op: `kind` of `stage` on microbatch `mb`."""

    stage: int
    kind: OpKind
    mb: int
    parts: tuple[Action, ...] = ()
    """An overlapped op's parts (its stage and mb are its first part's); else empty."""

    def __str__(self) -> str:
        if self.parts:  # torch's spelling: (0F1;3B0)OVERLAP_F_B
            return f"({';'.join(map(str, self.parts))}){self.kind.csv}"
        return f"{self.stage}{self.kind.name}{self.mb}"

    @classmethod
    def overlapped(cls, kind: OpKind, parts: tuple[Action, ...]) -> Action:
        return cls(stage=parts[0].stage, kind=kind, mb=parts[0].mb, parts=parts)

    @classmethod
    def parse(cls, text: str) -> Action:
        """Parse `2F0` or `(0F1;3B0)OVERLAP_F_B`; raises ScheduleError on anything else."""
        composite = _COMPOSITE_RE.match(text)
        if composite is not None:
            return cls._parse_overlapped(text, *composite.groups())
        match = _action_re().match(text)
        if match is None:
            kinds = ", ".join(k.name for k in ops.compute_kinds() if not k.parts)
            raise ScheduleError(
                f"unknown action {text.strip()!r}: expected STAGE KIND MICROBATCH like '2F0' "
                f"with KIND one of {kinds}, or (PART;PART)OVERLAP_F_B"
            )
        stage, kind, mb = match.groups()
        return cls(stage=int(stage), kind=ops.get(kind), mb=int(mb))

    @classmethod
    def _parse_overlapped(cls, text: str, inner: str, spelling: str) -> Action:
        parts = tuple(cls.parse(p) for p in inner.split(";"))
        kind = ops.composite_kind(tuple(p.kind.name for p in parts), spelling)
        if kind is None:
            known = ", ".join(f"({';'.join(a[0] for a in k.parts)}){k.csv}"
                              for k in ops.compute_kinds() if k.parts)
            raise ScheduleError(f"unknown overlapped action {text.strip()!r}: known forms {known}")
        return cls.overlapped(kind, parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class ComputeOrder:
    """Per rank, the ordered compute actions of one training step."""

    schedule: str
    ranks: int
    stages: int
    microbatches: int
    placement: tuple[int, ...]
    """Rank of each stage."""
    compute: tuple[tuple[Action, ...], ...]
    """compute[r] is rank r's actions in program order."""
    origins: tuple[tuple[SourcePos | None, ...], ...] = field(default=(), compare=False)
    """origins[r][i] is the schedule-file position that produced compute[r][i], if known."""

    def __post_init__(self) -> None:
        if len(self.placement) != self.stages:
            raise ValueError(f"placement has {len(self.placement)} entries for {self.stages} stages")
        if len(self.compute) != self.ranks:
            raise ValueError(f"compute has {len(self.compute)} rows for {self.ranks} ranks")

    @property
    def virtual(self) -> int:
        """Stages per rank (V)."""
        return self.stages // self.ranks

    @property
    def split_backward(self) -> bool:
        """Whether the backward is split (some op makes input gradients alone)."""
        return any("weight_grad" not in p.kind.phases and "input_grad" in p.kind.phases
                   for row in self.compute for a in row for p in (a.parts or (a,)))

    def origin(self, rank: int, index: int) -> SourcePos | None:
        if rank < len(self.origins) and index < len(self.origins[rank]):
            return self.origins[rank][index]
        return None

    def stages_of(self, rank: int) -> tuple[int, ...]:
        return tuple(s for s, r in enumerate(self.placement) if r == rank)

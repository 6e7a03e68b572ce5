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
    names = sorted((k.name for k in ops.compute_kinds()), key=len, reverse=True)
    return re.compile(r"^\s*(\d+)\s*(" + "|".join(map(re.escape, names)) + r")\s*(\d+)\s*$")


ops.on_change(_action_re.cache_clear)


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """One compute op: `kind` of `stage` on microbatch `mb`."""

    stage: int
    kind: OpKind
    mb: int

    def __str__(self) -> str:
        return f"{self.stage}{self.kind.name}{self.mb}"

    @classmethod
    def parse(cls, text: str) -> Action:
        """Parse `2F0`-style text; raises ScheduleError on anything else."""
        match = _action_re().match(text)
        if match is None:
            kinds = ", ".join(k.name for k in ops.compute_kinds())
            raise ScheduleError(
                f"unknown action {text.strip()!r}: expected STAGE KIND MICROBATCH like '2F0' "
                f"with KIND one of {kinds}"
            )
        stage, kind, mb = match.groups()
        return cls(stage=int(stage), kind=ops.get(kind), mb=int(mb))


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
        return any("weight_grad" not in a.kind.phases and "input_grad" in a.kind.phases
                   for row in self.compute for a in row)

    def origin(self, rank: int, index: int) -> SourcePos | None:
        if rank < len(self.origins) and index < len(self.origins[rank]):
            return self.origins[rank][index]
        return None

    def stages_of(self, rank: int) -> tuple[int, ...]:
        return tuple(s for s, r in enumerate(self.placement) if r == rank)

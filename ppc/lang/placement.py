"""Placements: which rank holds each stage (loop, V-shape or an explicit map)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ppc.errors import ScheduleError, SourcePos


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """The rank of each stage, and each rank's stages in ascending order."""

    ranks: int
    placement: tuple[int, ...]
    local: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, placement: tuple[int, ...], ranks: int) -> Layout:
        """One pass over the stages (linear in R x V); every rank must be in 0..ranks-1."""
        local: list[list[int]] = [[] for _ in range(ranks)]
        for stage, rank in enumerate(placement):
            local[rank].append(stage)
        return cls(ranks=ranks, placement=placement, local=tuple(map(tuple, local)))

    def stage(self, rank: int, index: int) -> int:
        """The stage of local index `index` on `rank` (stage(r, 0) is r's first stage)."""
        if not 0 <= rank < self.ranks:
            raise ValueError(f"rank {rank} is not in 0..{self.ranks - 1}")
        stages = self.local[rank]
        if not 0 <= index < len(stages):
            raise ValueError(f"rank {rank} has no local stage {index} (it holds {len(stages)})")
        return stages[index]

    def rank(self, stage: int) -> int:
        """The rank that holds `stage`."""
        if not 0 <= stage < len(self.placement):
            raise ValueError(f"stage {stage} is not in 0..{len(self.placement) - 1}")
        return self.placement[stage]


def loop(ranks: int, virtual: int) -> tuple[int, ...]:
    """Stage s on rank s % R."""
    return tuple(s % ranks for s in range(ranks * virtual))


def vshape(ranks: int, virtual: int) -> tuple[int, ...]:
    """Stages go down the ranks and back up: s and 2R-1-s share a rank (zigzag for V > 2)."""
    out = []
    for s in range(ranks * virtual):
        v, i = divmod(s, ranks)
        out.append(i if v % 2 == 0 else ranks - 1 - i)
    return tuple(out)


def explicit(ranks_of_stages: list[int], *, ranks: int, virtual: int, pos: SourcePos) -> tuple[int, ...]:
    """An explicit map; every rank must hold exactly V stages."""
    stages = ranks * virtual
    if len(ranks_of_stages) != stages:
        raise ScheduleError(
            f"placement lists {len(ranks_of_stages)} stages but R*V = {stages}", pos=pos
        )
    for stage, rank in enumerate(ranks_of_stages):
        if not 0 <= rank < ranks:
            raise ScheduleError(f"placement puts stage {stage} on rank {rank}, not in 0..{ranks - 1}", pos=pos)
    counts = Counter(ranks_of_stages)
    for rank in range(ranks):
        held = counts[rank]
        if held != virtual:
            raise ScheduleError(f"placement gives rank {rank} {held} stages, expected V = {virtual}", pos=pos)
    return tuple(ranks_of_stages)

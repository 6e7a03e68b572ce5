"""Balanced stage splits: contiguous groups of layers with the smallest slowest stage."""

from __future__ import annotations

from collections.abc import Sequence

from ppc.balance import balanced_partition
from ppc.errors import CostError


def balanced_split(weights: Sequence[float], stages: int) -> tuple[int, ...]:
    """Layers per stage, contiguous and non-empty, minimising the largest stage sum.

    Raises CostError when there are fewer layers than stages.
    """
    if stages < 1 or len(weights) < stages:
        raise CostError(f"cannot split {len(weights)} layers into {stages} non-empty stages")
    return balanced_partition(weights, stages)


def stage_sums(weights: Sequence[float], split: Sequence[int]) -> tuple[float, ...]:
    out, start = [], 0
    for count in split:
        out.append(sum(weights[start:start + count]))
        start += count
    return tuple(out)

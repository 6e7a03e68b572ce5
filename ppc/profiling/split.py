"""Balanced stage splits: contiguous groups of layers with the smallest slowest stage."""

from __future__ import annotations

from collections.abc import Sequence

from ppc.errors import CostError


def balanced_split(weights: Sequence[float], stages: int) -> tuple[int, ...]:
    """Layers per stage, contiguous and non-empty, minimising the largest stage sum.

    Exact: dynamic programming over prefix sums, O(stages * n^2). Raises CostError
    when there are fewer layers than stages.
    """
    n = len(weights)
    if stages < 1 or n < stages:
        raise CostError(f"cannot split {n} layers into {stages} non-empty stages")
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    # best[k][i]: smallest max-stage cost of splitting the first i layers into k stages
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n - (stages - k) + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i] - 1e-15:
                    best[k][i], cut[k][i] = cost, j
    counts = []
    i = n
    for k in range(stages, 0, -1):
        j = cut[k][i]
        counts.append(i - j)
        i = j
    return tuple(reversed(counts))


def stage_sums(weights: Sequence[float], split: Sequence[int]) -> tuple[float, ...]:
    out, start = [], 0
    for count in split:
        out.append(sum(weights[start:start + count]))
        start += count
    return tuple(out)

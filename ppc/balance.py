"""Contiguous balanced partitioning, shared by the frontend's split and `ppc plan`."""

from __future__ import annotations

from collections.abc import Sequence


def balanced_partition(weights: Sequence[float], parts: int) -> tuple[int, ...]:
    """Sizes of `parts` contiguous, non-empty groups of `weights` minimising the largest sum.

    Exact: dynamic programming over prefix sums, O(parts * n^2). Requires
    1 <= parts <= len(weights); callers check and raise their own error.
    """
    n = len(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    # best[k][i]: smallest largest-group sum splitting the first i weights into k groups
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i] - 1e-15:
                    best[k][i], cut[k][i] = cost, j
    sizes = []
    i = n
    for k in range(parts, 0, -1):
        j = cut[k][i]
        sizes.append(i - j)
        i = j
    return tuple(reversed(sizes))

"""A per-rank memory budget: activation sets, or bytes.

Counted as `ppc simulate` counts them (ppc/sim/memory.py): a (stage, microbatch) holds
one activation set from its F until its W (or B). In bytes, F allocates the stage's
activation bytes, I frees all but the `weight_share` W still needs, W frees the rest.

The smallest budget any schedule can keep: a microbatch's F runs on every stage of a
rank before the first backward of that microbatch there, so a rank holds at least its
V stages' sets (in bytes: their sum) at once; one microbatch at a time achieves it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ppc.costs import CostModel
from ppc.errors import CostError

__all__ = ["MemoryBudget", "parse_budget"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryBudget:
    """What each rank may hold at once."""

    limit: float
    """Activation sets (kind "sets") or bytes (kind "bytes") per rank."""
    kind: str = "sets"
    per_rank: tuple[float, ...] = ()
    """A limit for each rank instead (`ppc plan`: the cap less each rank's weights); `limit`
    is then their smallest."""

    def __post_init__(self) -> None:
        if self.kind not in ("sets", "bytes"):
            raise ValueError(f"budget kind must be 'sets' or 'bytes', got {self.kind!r}")
        if not self.limit >= 0 or any(not v >= 0 for v in self.per_rank):
            raise CostError(f"--memory must be >= 0, got {self.per_rank or self.limit!r}")

    def of(self, rank: int) -> float:
        """Rank `rank`'s limit."""
        return self.per_rank[rank] if self.per_rank else self.limit

    def __str__(self) -> str:
        low, high = (min(self.per_rank), max(self.per_rank)) if self.per_rank else (self.limit, self.limit)
        if self.kind == "sets":
            return f"{low:g} activation sets" if low == high else f"{low:g}-{high:g} activation sets by rank"
        return f"{low / 2**30:.4g} GiB" if low == high else f"{low / 2**30:.4g}-{high / 2**30:.4g} GiB by rank"

    def minimum(self, placement: Sequence[int], costs: CostModel, rank: int) -> float:
        """The least budget any schedule fits in on `rank` (see the module docstring)."""
        if self.kind == "sets":
            return float(list(placement).count(rank))
        sizes = _bytes(costs)
        return float(sum(sizes[s] for s, p in enumerate(placement) if p == rank))

    def check(self, placement: Sequence[int], costs: CostModel) -> None:
        """Refuse a budget below the minimum, naming the minimum."""
        ranks = max(placement) + 1
        short = [r for r in range(ranks) if self.of(r) < self.minimum(placement, costs, r)]
        if not short:
            return
        r = short[0]
        least = self.minimum(placement, costs, r) if self.per_rank else max(
            self.minimum(placement, costs, q) for q in range(ranks))
        virtual = len(placement) // ranks
        shown = f"{least:g} activation sets" if self.kind == "sets" else f"{least:,.0f} bytes ({least / 2**30:.3g} GiB)"
        where = f"on rank {r}" if self.per_rank else "per rank"
        raise CostError(
            f"--memory {self}: below the minimum any schedule needs, {shown} {where} "
            f"(each rank runs the forward of its {virtual} stage(s) of a microbatch before its backward)"
        )

    def held(self, placement: Sequence[int], costs: CostModel) -> list[tuple[int, int]]:
        """Per rank, at most how many forwards can be alive at once and how many W can be
        pending at once (each holds a set, or its bytes, meanwhile)."""
        many = 1 << 30
        out = []
        for r in range(max(placement) + 1):
            mine = [s for s, p in enumerate(placement) if p == r]
            if self.kind == "sets":
                k = int(self.of(r) + 1e-9)
                out.append((k, k))
                continue
            full = min(costs.activation_bytes[s] for s in mine)
            kept = min(costs.weight_share * costs.activation_bytes[s] for s in mine)
            limit = self.of(r)
            out.append((int(limit // full) if full > 0 else many, int(limit // kept) if kept > 0 else many))
        return out

    def usage(self, peak_activations: int, peak_bytes: int | None) -> float:
        """A rank's peak in this budget's unit."""
        if self.kind == "sets":
            return float(peak_activations)
        return float(peak_bytes or 0)

    def fits(self, peaks: Sequence[tuple[int, int | None]]) -> bool:
        """Whether every rank's (peak_activations, peak_bytes) is within the limit."""
        return all(self.usage(a, b) <= self.of(r) for r, (a, b) in enumerate(peaks))


def parse_budget(text: str, costs: CostModel) -> MemoryBudget:
    """`4` (activation sets) or `12GiB`, `500MB`, `1e9B` (bytes; needs the costs' activation bytes)."""
    match = _BUDGET_RE.match(text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise CostError(f"--memory: cannot read {text!r}; give activation sets (4) or bytes (12GiB, 500MB, 1e9B)")
    value = float(match.group(1))
    if unit == "":
        return MemoryBudget(limit=value, kind="sets")
    _bytes(costs, flag=f"--memory {text}")
    return MemoryBudget(limit=value * _UNITS[unit], kind="bytes")


def _bytes(costs: CostModel, *, flag: str = "a budget in bytes") -> tuple[int, ...]:
    if not costs.activation_bytes:
        raise CostError(f"{flag} needs activation_bytes in the costs (a costs .json); or give activation sets (4)")
    return costs.activation_bytes

"""`ppc search` solve times on the cases of docs/results.md ("Schedule search").

Run: .venv/bin/python -m pytest tests/bench/test_bench_search.py --benchmark-enable
Without --benchmark-enable only the smallest case runs (once, as a check); the others
take tens of seconds on a loaded 2-core machine and are skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ppc.costs import CostModel
from ppc.search import MemoryBudget, SearchRequest, search

pytest.importorskip("ortools")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "costs"


def solve(ranks, microbatches, costs, *, virtual=1, sets=None):
    request = SearchRequest(ranks=ranks, microbatches=microbatches, virtual=virtual, costs=costs,
                            memory=MemoryBudget(limit=sets) if sets else None, time_limit=60, workers=2)
    return search(request)


def test_bench_search_r4_m8_v1_budget_1f1b(benchmark):
    result = benchmark.pedantic(solve, args=(4, 8, CostModel.uniform(4)), kwargs={"sets": 4}, rounds=3, iterations=1)
    assert result.optimal and result.makespan == 3 * 8 + 4 - 1  # ZB-H1's closed form at 1F1B's memory


def test_bench_search_r4_m8_v2_unbounded(benchmark):
    if benchmark.disabled:
        pytest.skip("runs with --benchmark-enable")
    result = benchmark.pedantic(solve, args=(4, 8, CostModel.uniform(8)), kwargs={"virtual": 2},
                                rounds=3, iterations=1)
    assert result.optimal and result.makespan == 3 * 16 + 4 - 1


def test_bench_search_r8_m16_uneven_budget_r_sets(benchmark):
    if benchmark.disabled:
        pytest.skip("runs with --benchmark-enable")
    costs = CostModel.load(str(DOCS / "uneven_last2x_r8.json"), 8)
    result = benchmark.pedantic(solve, args=(8, 16, costs), kwargs={"sets": 8}, rounds=3, iterations=1)
    assert result.gap <= 0.02


def test_bench_search_r8_m32_llama_calibrated_budget_1f1b(benchmark):
    if benchmark.disabled:
        pytest.skip("runs with --benchmark-enable")
    from ppc.plan.cost_profile import CostProfile

    profile = CostProfile.load(DOCS / "llama1b_pp8_a40_calibrated.json")
    costs = profile.grouped((3, 2, 2, 2, 2, 3, 3, 1)).costs  # `ppc plan`'s split for 8 ranks, M = 32
    result = benchmark.pedantic(solve, args=(8, 32, costs), kwargs={"sets": 8}, rounds=3, iterations=1)
    assert result.gap <= 0.01

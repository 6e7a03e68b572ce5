"""zb_h2 (ZB-H2, Qi et al. 2024): closed forms under unit costs and a latency, its memory, zb_h1,
the proven optimum of `ppc search` and (with PPC_ZB_REPO) the authors' automatic scheduler.

Costs are F = I = W = 1 per stage plus a transfer latency c (0 unless stated); memory is ppc's
model (a (stage, microbatch) set is alive from its F until its W). ppc's step ends with a global
STEP, so rank R-1, which starts its first F after R-1 forwards and R-1 transfers and then has
3M units of work, bounds every order from below by 3M + (R-1)(1+c) + c (the STEP's sync costs
one latency).
"""

from __future__ import annotations

import functools
import os

import pytest
from ppc.sim.timeline import simulate

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.errors import ScheduleError
from ppc.lang import load_schedule
from ppc.verify.program import check

GRID = [(r, m) for r in range(2, 9) for m in range(r, 4 * r + 1)]  # R in 2..8, M in R..4R
LATENCIES = (0.1, 0.5)


@functools.cache
def measure(name: str, ranks: int, microbatches: int, latency: float = 0.0) -> tuple[float, tuple[int, ...]]:
    """(makespan, peak activation sets per rank): expanded, lowered, validated, timed."""
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches)
    costs = CostModel.parse_inline(f"F=1,I=1,W=1,latency={latency:g}", order.stages)
    program = lower(order, None, costs=costs)
    timeline = simulate(program, costs, checked=check(program, None))  # check: complete, no deadlock
    return timeline.makespan, tuple(s.peak_activations for s in timeline.per_rank)


def bound(ranks: int, microbatches: int, latency: float = 0.0) -> float:
    return 3 * microbatches + (ranks - 1) * (1 + latency) + latency


@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_unit_costs_step_and_memory(ranks: int, microbatches: int) -> None:
    makespan, peaks = measure("zb_h2", ranks, microbatches)
    assert makespan == 3 * microbatches + ranks - 1 == bound(ranks, microbatches)
    # warm-up 2(R-1-r)+1 forwards plus a W lag of 2r: 2R-1 sets on every rank once M allows
    assert peaks == (min(2 * ranks - 1, microbatches),) * ranks
    h1_makespan, h1_peaks = measure("zb_h1", ranks, microbatches)
    assert makespan == h1_makespan  # without transfer time zb_h1 already reaches the bound
    assert max(peaks) >= max(h1_peaks)


@pytest.mark.parametrize("latency", LATENCIES)
def test_with_a_latency_it_reaches_the_bound_once_m_fills_the_warm_up(latency: float) -> None:
    behind_h1 = []
    for ranks, microbatches in GRID:
        makespan, peaks = measure("zb_h2", ranks, microbatches, latency)
        h1_makespan, _ = measure("zb_h1", ranks, microbatches, latency)
        assert max(peaks) <= 2 * ranks - 1
        assert makespan <= h1_makespan + 1e-9, (ranks, microbatches)
        if microbatches >= 2 * ranks - 1:  # rank 0's warm-up is whole
            assert makespan == pytest.approx(bound(ranks, microbatches, latency)), (ranks, microbatches)
            behind_h1.append(h1_makespan - makespan)
        else:
            assert makespan >= bound(ranks, microbatches, latency) - 1e-9
    # zb_h1's R sets cannot hide the round trip: it falls behind by (R-1) latencies and more
    assert min(behind_h1) > 0


def test_r4_m8_figures() -> None:
    """The README's row and `ppc simulate zb_h1 zb_h2 -r 4 -m 8 --compare`."""
    assert measure("zb_h2", 4, 8) == (27.0, (7, 7, 7, 7))
    assert measure("zb_h1", 4, 8) == (27.0, (4, 4, 4, 4))
    assert measure("zb_h2", 4, 8, 0.1)[0] == pytest.approx(27.4)
    assert measure("zb_h1", 4, 8, 0.1)[0] == pytest.approx(28.3)


@pytest.mark.parametrize(("ranks", "microbatches"), [(1, 3), (2, 1), (4, 1), (4, 3), (8, 5)])
def test_few_microbatches_and_one_rank(ranks: int, microbatches: int) -> None:
    makespan, peaks = measure("zb_h2", ranks, microbatches)
    assert peaks == (min(2 * ranks - 1, microbatches),) * ranks
    assert makespan == measure("zb_h1", ranks, microbatches)[0]


def test_more_than_one_stage_per_rank_is_refused() -> None:
    with pytest.raises(ScheduleError) as caught:
        load_schedule("zb_h2").expand(ranks=4, microbatches=8, virtual=2)
    assert "zb_h2 has one stage per rank; use interleaved_zb or zbv for more (R=4, M=8, V=2)" in str(caught.value)


@pytest.mark.parametrize(("ranks", "microbatches", "latency"), [(3, 3, 0.5), (4, 5, 0.5), (4, 8, 0.1)])
def test_search_proves_it_optimal_in_2r_minus_1_sets(ranks: int, microbatches: int, latency: float) -> None:
    """Including points below 2R-1 microbatches, where zb_h2 misses the simple bound."""
    pytest.importorskip("ortools")
    from ppc.search import MemoryBudget, SearchRequest, search

    costs = CostModel.parse_inline(f"F=1,I=1,W=1,latency={latency:g}", ranks)
    result = search(SearchRequest(ranks=ranks, microbatches=microbatches, virtual=1, placement="loop",
                                  costs=costs, memory=MemoryBudget(limit=2 * ranks - 1), time_limit=30,
                                  workers=1, split_backward=True))
    assert result.optimal
    assert result.makespan == pytest.approx(measure("zb_h2", ranks, microbatches, latency)[0])
    zb_h2 = next(c for c in result.builtins if c.name == "zb_h2")
    assert zb_h2.fits and zb_h2.makespan == pytest.approx(result.lower_bound)


@pytest.mark.skipif(not os.environ.get("PPC_ZB_REPO"),
                    reason="PPC_ZB_REPO is not set (a work tree of sail-sg/zero-bubble-pipeline-parallelism)")
def test_equal_to_the_authors_scheduler_at_2r_sets() -> None:
    """Their automatic scheduler (zb.py) with a limit of 2R sets, timed by ppc's simulator."""
    from conftest import load_script

    script = load_script("compare_zero_bubble")
    uniform = script.SETTINGS[:2]  # F = I = W = 1, without and with a latency of 0.1
    rows = script.compare(os.environ["PPC_ZB_REPO"], ranks=range(2, 6), settings=uniform, families=("ZB-H2",))
    assert len(rows) == 2 * 4 * 3
    for r in rows:
        assert r.ppc_makespan == pytest.approx(r.their_makespan), r
        assert r.their_compute_end == pytest.approx(r.their_own_makespan), r
        assert r.ppc_peak <= min(2 * r.ranks - 1, r.microbatches) <= r.their_peak <= r.memory_limit, r

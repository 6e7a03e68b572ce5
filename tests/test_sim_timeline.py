"""Timeline numbers against the closed forms, memory, critical path, communication."""

from __future__ import annotations

import itertools

import pytest
from ppc.sim.timeline import simulate

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.errors import CostError
from ppc.ir.program import TensorSpec
from ppc.ir.stage_graph import StageGraph, StageValue
from ppc.lang import load_schedule

GRID = [(r, m) for r in (2, 3, 4, 8) for m in (1, 2, 3, 4, 8, 16)]
"""Ranks x microbatches, with fewer microbatches than ranks (a warm-up cut short) and more."""


def run(name, ranks, microbatches, virtual=None, costs=None, graph=None):
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    costs = costs or CostModel.uniform(order.stages)
    return simulate(lower(order, graph, costs=costs), costs, graph=graph)


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_gpipe_and_1f1b_bubble_is_the_closed_form(name, ranks, microbatches):
    timeline = run(name, ranks, microbatches)
    assert timeline.bubble == pytest.approx((ranks - 1) / (microbatches + ranks - 1))
    assert timeline.makespan == pytest.approx(3 * (microbatches + ranks - 1))


@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_peak_activations_1f1b_is_min_of_r_minus_rank_and_m(ranks, microbatches):
    timeline = run("1f1b", ranks, microbatches)
    assert [s.peak_activations for s in timeline.per_rank] == [
        min(ranks - r, microbatches) for r in range(ranks)
    ]


@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_peak_activations_gpipe_is_m(ranks, microbatches):
    timeline = run("gpipe", ranks, microbatches)
    assert [s.peak_activations for s in timeline.per_rank] == [microbatches] * ranks


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("virtual", [2, 3])
@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_interleaved_bubble_is_the_closed_form(ranks, virtual, rounds):
    microbatches = rounds * ranks
    timeline = run("interleaved_1f1b", ranks, microbatches, virtual)
    assert timeline.bubble == pytest.approx((ranks - 1) / (virtual * microbatches + ranks - 1))


@pytest.mark.parametrize(("ranks", "microbatches"), [(2, 2), (2, 4), (3, 3), (3, 6), (4, 4), (4, 8), (8, 16)])
@pytest.mark.parametrize(("f", "i", "w"), [(1, 1, 1), (1.0, 1.5, 0.5), (2, 1, 1)])
def test_zb_h1_idle_time_per_rank_is_the_closed_form(ranks, microbatches, f, i, w):
    costs = CostModel.uniform(ranks, F=f, I=i, W=w)
    timeline = run("zb_h1", ranks, microbatches, costs=costs)
    for stats in timeline.per_rank:
        assert stats.busy == pytest.approx(microbatches * (f + i + w))
        assert stats.idle == pytest.approx((ranks - 1) * (f + i - w))


def test_zb_h1_trades_memory_for_bubble():
    h1, ob = run("zb_h1", 4, 8), run("1f1b", 4, 8)
    assert h1.bubble < ob.bubble
    # 1F1B's peak (R sets on rank 0), which ZB-H1 reaches on every rank: W trails I by r ops
    assert h1.peak_activations == ob.peak_activations == 4
    assert [s.peak_activations for s in h1.per_rank] == [4, 4, 4, 4]
    assert [s.peak_activations for s in ob.per_rank] == [4, 3, 2, 1]
    # in bytes, deferred W keep only the weight share: with share 0 the peak equals 1F1B's
    sizes = {"activation_bytes": 100, "weight_share": 0.0}
    h1_bytes = run("zb_h1", 4, 8, costs=CostModel.from_dict(sizes, 4))
    ob_bytes = run("1f1b", 4, 8, costs=CostModel.from_dict(sizes, 4))
    assert [s.peak_bytes for s in h1_bytes.per_rank] == [s.peak_bytes for s in ob_bytes.per_rank]
    assert [s.peak_bytes for s in ob_bytes.per_rank] == [400, 300, 200, 100]


def test_peak_bytes_use_the_weight_share():
    costs = CostModel.from_dict({"activation_bytes": [1000, 1000], "weight_share": 0.25}, 2)
    order = load_schedule("zb_h1").expand(ranks=2, microbatches=1)
    timeline = simulate(lower(order), costs)
    # one microbatch: F allocates 1000; I keeps 250 until W
    assert [s.peak_bytes for s in timeline.per_rank] == [1000, 1000]
    assert [s.peak_activations for s in timeline.per_rank] == [1, 1]


def test_bubble_is_idle_fraction_over_all_ranks():
    timeline = run("1f1b", 4, 8, costs=CostModel.from_dict({"F": [1, 2, 1, 1]}, 4))
    busy = sum(s.busy for s in timeline.per_rank)
    assert timeline.bubble == pytest.approx(1 - busy / (4 * timeline.makespan))
    for s in timeline.per_rank:
        assert s.idle == pytest.approx(timeline.makespan - s.busy)
        assert s.bubble == pytest.approx(s.idle / timeline.makespan)


def test_critical_path_is_a_chain_of_ops_spanning_the_makespan():
    timeline = run("1f1b", 4, 4)
    path = timeline.critical_path
    assert path[0].start == 0 and path[-1].end == timeline.makespan
    assert all(a.end <= b.start + 1e-9 for a, b in itertools.pairwise(path))
    # with uniform costs every moment of the makespan is covered by the path
    assert sum(s.end - s.start for s in path) == pytest.approx(timeline.makespan)
    assert str(path[0].instruction) == "0F0"


def test_transfers_cost_latency_plus_bytes_over_bandwidth():
    spec = TensorSpec(name="h", shape=(1000,), dtype="float32", bytes=4000)
    graph = StageGraph(num_stages=2, values=(StageValue(name="h", producer=0, consumers=(1,), spec=spec),))
    costs = CostModel.from_dict({"comm": {"latency": 0.5, "bandwidth": 8000.0}}, 2)
    assert costs.transfer(4000) == pytest.approx(1.0)
    timeline = run("gpipe", 2, 1, costs=costs, graph=graph)
    # 0F0 (1) -> transfer (1) -> 1F0 (1) -> 1B0 (2) -> transfer (1) -> 0B0 (2), then STEP
    # all-reduces the gradient norm (one 8-byte message: 0.5 + 0.001)
    assert timeline.makespan == pytest.approx(8.0 + costs.transfer(8))
    spans = {str(s.instruction): s for s in timeline.spans(rank=1)}
    assert spans["1F0"].start == pytest.approx(2.0)
    assert spans["1RECV_F0"].end == pytest.approx(2.0)


def test_costs_must_match_the_stages():
    order = load_schedule("1f1b").expand(ranks=2, microbatches=2)
    with pytest.raises(CostError, match="costs give 3 stages, the program has 2"):
        simulate(lower(order), CostModel.uniform(3))

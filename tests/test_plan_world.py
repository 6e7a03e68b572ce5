"""`ppc plan --world N`: PP x DP factorizations ranked by one pipeline's simulated step
with its gradient reductions (collective cost terms)."""

from __future__ import annotations

import json

import pytest
from conftest import ppc

from ppc.lang import load_schedule
from ppc.plan.cost_profile import CostProfile
from ppc.plan.planner import PlanRequest
from ppc.plan.world import factorizations, plan_world
from ppc.predict import simulate_order

LAYERS = 8
PARAMS = 25_000_000  # per layer: 100 MB of fp32 gradients


def profile(*, latency: float, bandwidth: float) -> CostProfile:
    layers = [{"name": f"block{i}", "F": 0.01, "I": 0.01, "W": 0.01, "params": PARAMS,
               "activation_bytes": 2**20, "output_bytes": 2**16} for i in range(LAYERS)]
    return CostProfile.from_dict({"unit": "s", "layers": layers, "comm": {"latency": 1e-5, "bandwidth": 1e10},
                                  "collective": {"latency": latency, "bandwidth": bandwidth}})


def request(**extra) -> PlanRequest:
    return PlanRequest(ranks=1, global_batch=64, schedules=("1f1b",), virtual=(1,), microbatch_sizes=(1,),
                       auto_zero_bubble=False, **extra)


def test_factorizations():
    assert factorizations(64) == [(1, 64), (2, 32), (4, 16), (8, 8), (16, 4), (32, 2), (64, 1)]
    assert factorizations(64, max_ranks=8) == [(1, 64), (2, 32), (4, 16), (8, 8)]


def test_each_shape_is_one_pipeline_with_its_reductions():
    costs = profile(latency=1e-4, bandwidth=1e9)
    plan = plan_world(costs, world=8, global_batch=64, request=request())
    assert sorted(s.label for s in plan.shapes) == ["1 x 8", "2 x 4", "4 x 2", "8 x 1"]
    for shape in plan.shapes:
        best = shape.best
        assert best.dp == shape.dp and best.microbatches * best.microbatch_size == 64 // shape.dp
        # the step is what `ppc simulate --dp` predicts for that pipeline and split
        stage_costs = costs.grouped(best.split, microbatch_size=best.microbatch_size)
        order = load_schedule("1f1b").expand(ranks=shape.ranks, microbatches=best.microbatches, virtual=1)
        timeline = simulate_order(order, stage_costs.costs, stage_costs.stage_graph(), dp=shape.dp)
        assert best.step_time == pytest.approx(timeline.makespan)
        # 1F1B reduces each rank's one stage after its last W: all of it is exposed
        layers = max(best.split)
        expected = stage_costs.costs.all_reduce(4 * PARAMS * layers, shape.dp)
        assert best.exposed_reduce == pytest.approx(expected, rel=1e-9)
    times = [s.best.step_time for s in plan.shapes]
    assert times == sorted(times)


def test_the_collective_terms_decide_between_pipeline_and_replicas():
    fast = plan_world(profile(latency=0.0, bandwidth=1e15), world=8, global_batch=64, request=request())
    slow = plan_world(profile(latency=1e-3, bandwidth=1e8), world=8, global_batch=64, request=request())
    # free reductions: eight replicas without a pipeline bubble win; slow ones: one deep pipeline
    assert (fast.winner.ranks, fast.winner.dp) == (1, 8)
    assert (slow.winner.ranks, slow.winner.dp) == (8, 1)


def test_a_batch_that_does_not_divide_over_the_replicas_is_reported():
    plan = plan_world(profile(latency=0.0, bandwidth=1e10), world=4, global_batch=6, request=request())
    shapes = {s.label: s for s in plan.shapes}
    assert shapes["1 x 4"].best is None and "does not divide over 4 replicas" in shapes["1 x 4"].reason
    assert shapes["2 x 2"].best is not None and plan.shapes[-1].label == "1 x 4"


def test_cli_plan_world(tmp_path):
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(profile(latency=1e-4, bandwidth=1e9).to_dict()))
    out = tmp_path / "plan.ppc"
    done = ppc("plan", "--world", "8", "--global-batch", "32", "--costs", str(costs), "--schedules", "1f1b",
               "--microbatch-sizes", "1", "-V", "1", "--no-auto-zb", "-o", str(out), env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "PP x DP" in done.stdout and "exposed reduce" in done.stdout and "8 x 1" in done.stdout
    assert "--dp" in done.stdout or "PP 8 x DP 1" in done.stdout
    assert out.read_text().startswith("# ppc plan:")
    both = ppc("plan", "--world", "8", "--ranks", "2", "--global-batch", "32", "--costs", str(costs))
    assert both.returncode == 2 and "not both" in both.stderr and "Traceback" not in both.stderr

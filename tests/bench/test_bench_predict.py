"""Benchmarks: how long prediction takes (simulating one plan, searching plans)."""

from __future__ import annotations

from pathlib import Path

from ppc.lang import load_schedule
from ppc.plan.cost_profile import CostProfile
from ppc.plan.planner import PlanRequest, predict, search

COSTS = Path(__file__).parents[2] / "docs" / "costs" / "llama1b_pp8_a40_calibrated.json"


def test_bench_predict_logged_1f1b(benchmark):
    profile = CostProfile.load(COSTS)
    order = load_schedule("1f1b").expand(ranks=8, microbatches=32, virtual=1)
    step = benchmark(predict, order, profile.as_logged())
    assert abs(step - profile.meta["measured_step_s"]) < 0.01 * step


def test_bench_plan_search(benchmark):
    profile = CostProfile.load(COSTS)
    request = PlanRequest(ranks=8, global_batch=32, memory_cap=48 * 2**30, microbatch_sizes=(1,),
                          virtual=(1,), schedules=("1f1b", "zb_h1"))
    best = benchmark.pedantic(search, args=(profile, request), rounds=1, iterations=1)[0]
    assert best.step_time < 0.7 * profile.meta["measured_step_s"]

"""ppc's lowering + validation + timeline against torch.distributed.pipelining's lowering
+ dry run on the same case: interleaved 1F1B, R=32, M=256, V=4 (32,768 compute ops).

Run: .venv/bin/python -m pytest tests/bench/test_bench_sim.py --benchmark-enable
The figures are recorded in docs/simulator.md.
"""

from __future__ import annotations

import gc

import pytest

R, M, V = 32, 256, 4


def ppc_pipeline():
    from ppc.sim.timeline import simulate

    from ppc.compiler.lower import lower
    from ppc.costs import CostModel
    from ppc.lang import load_schedule
    from ppc.verify.program import check

    gc.disable()
    try:
        order = load_schedule("interleaved_1f1b").expand(ranks=R, microbatches=M, virtual=V)
        costs = CostModel.uniform(order.stages)
        program = lower(order, costs=costs)
        return simulate(program, costs, checked=check(program))
    finally:
        gc.enable()


def torch_pipeline():
    from torch.distributed.pipelining._schedule_visualizer import get_schedule_ops
    from torch.distributed.pipelining.schedules import _simulate_comms_compute

    ops = get_schedule_ops("Interleaved1F1B", R, M, V, with_comms=True)
    # keep compute and point-to-point actions; the dry run rejects UNSHARD/RESHARD/REDUCE_GRAD
    keep = {"F", "B", "I", "W", "SEND_F", "RECV_F", "SEND_B", "RECV_B"}
    order = {
        rank: [a for a in row if a is not None and a.computation_type.value in keep]
        for rank, row in enumerate(ops)
    }
    return _simulate_comms_compute(order, lambda stage: stage % R, R * V)


def test_bench_ppc_simulate_interleaved_32x256x4(benchmark):
    timeline = benchmark.pedantic(ppc_pipeline, rounds=3, iterations=1)
    assert timeline.bubble == pytest.approx((R - 1) / (V * M + R - 1))


def test_bench_torch_lower_and_dry_run_interleaved_32x256x4(benchmark):
    pytest.importorskip("torch")
    if benchmark.disabled:
        pytest.skip("takes about 10 s; runs with --benchmark-enable")
    schedule = benchmark.pedantic(torch_pipeline, rounds=1, iterations=1)
    assert len(schedule) == R

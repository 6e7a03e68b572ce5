"""Data parallelism in the simulator: collective cost terms, REDUCE_GRAD on each rank's
network beside its compute, STEP waiting for the rank's reductions, the exposed part."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import ppc
from ppc.sim.timeline import simulate
from ppc.sim.trace import trace_events

from ppc.compiler import compile_program
from ppc.costs import CostModel
from ppc.errors import CostError
from ppc.ir.stage_graph import synthetic_chain
from ppc.lang import load_schedule


def costs(stages: int, **extra) -> CostModel:
    return CostModel.from_dict({"collective": {"latency": 0.5, "bandwidth": 1000.0}, **extra}, stages)


def programs(name: str, ranks: int, microbatches: int, virtual: int, grad_bytes: int, dp: int):
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    graph = dataclasses.replace(synthetic_chain(order.stages), param_bytes=(grad_bytes,) * order.stages)
    return compile_program(order, graph), compile_program(order, graph, dp=dp)


def test_ring_formulas_and_defaults():
    c = costs(2)
    # all-reduce of n bytes over D: 2 (D-1)/D n / bandwidth + 2 (D-1) latency
    assert c.all_reduce(4000, 4) == pytest.approx(2 * 3 / 4 * 4000 / 1000 + 2 * 3 * 0.5)
    assert c.reduce_scatter(4000, 4) == pytest.approx(c.all_reduce(4000, 4) / 2)
    assert c.all_reduce(4000, 1) == 0.0
    # without "collective", the point-to-point terms stand in
    p2p = CostModel.from_dict({"comm": {"latency": 0.25, "bandwidth": 100.0}}, 2)
    assert p2p.all_reduce(100, 2) == pytest.approx(100 / 100 + 2 * 0.25)
    back = CostModel.from_dict(costs(2, param_bytes=[10, 20]).to_dict(), 2)
    assert (back.collective_latency, back.collective_bandwidth, back.param_bytes) == (0.5, 1000.0, (10, 20))


@pytest.mark.parametrize(("data", "message"), [
    ({"collective": {"latncy": 1}}, "c.json: collective: unknown key 'latncy' .did you mean 'latency'"),
    ({"collective": {"bandwidth": 0}}, "c.json: collective.bandwidth: must be >="),
    ({"collective": {"latency": -1}}, "c.json: collective.latency: must be >= 0"),
    ({"collective": {"latency": "fast"}}, "c.json: collective.latency: must be a time"),
    ({"collective": [1, 2]}, "c.json: collective: must be an object"),
    ({"param_bytes": [1, 2, 3]}, "c.json: param_bytes: needs a number or 2 values"),
    ({"param_bytes": [1, -5]}, r"c.json: param_bytes\[1\]: must be >= 0"),
])
def test_bad_collective_terms_are_one_line_cost_errors(data, message):
    with pytest.raises(CostError, match=message):
        CostModel.from_dict(data, 2, source="c.json")


@pytest.mark.parametrize("cores", [None, 2.0])
def test_one_stage_per_rank_exposes_the_whole_all_reduce(cores):
    single, replicated = programs("1f1b", 4, 8, 1, 4000, dp=4)
    c = dataclasses.replace(costs(4), cores=cores)
    base = simulate(single, c)
    # replicas share a CPU host's cores: 4 replicas need 4x the cores of one pipeline
    dp = simulate(replicated, dataclasses.replace(c, cores=cores and 4 * cores), dp=4)
    reduce = c.all_reduce(4000, 4)  # 6 + 3 = 9
    # 1F1B's one stage per rank ends with its last W: nothing left to hide the reduction
    assert [s.reduce for s in dp.per_rank] == pytest.approx([reduce] * 4)
    assert [s.exposed_reduce for s in dp.per_rank] == pytest.approx([reduce] * 4)
    assert dp.makespan == pytest.approx(base.makespan + reduce)
    # the compute ops keep their times: the reductions never block compute
    compute = [t for x in dp.spans(compute_only=True) for t in (x.start, x.end)]
    assert compute == pytest.approx([t for x in base.spans(compute_only=True) for t in (x.start, x.end)])
    # with one replica the same program takes no reduction time
    assert simulate(replicated, c).makespan == pytest.approx(base.makespan)
    if cores:  # the host's cores serve every replica: on one pipeline's cores, compute stretches
        assert simulate(replicated, c, dp=4).makespan > dp.makespan


@pytest.mark.parametrize("cores", [None, 2.0])
def test_interleaved_hides_the_first_chunk_reduction(cores):
    single, replicated = programs("interleaved_1f1b", 4, 8, 2, 4000, dp=8)
    c = dataclasses.replace(costs(8), cores=cores)
    base = simulate(single, c)
    dp = simulate(replicated, dataclasses.replace(c, cores=cores and 8 * cores), dp=8)
    reduce = c.all_reduce(4000, 8)  # per stage
    assert reduce == pytest.approx(2 * 7 / 8 * 4 + 2 * 7 * 0.5)
    for rank, stats in enumerate(dp.per_rank):
        spans = list(dp.spans(rank))
        reductions = [x for x in spans if x.instruction.op.name == "REDUCE_GRAD"]
        assert len(reductions) == 2 and stats.reduce == pytest.approx(2 * reduce)
        for x in reductions:  # starts once its stage's last weight gradient is done
            last_w = max(y.end for y in spans if y.instruction.op.is_compute and y.instruction.stage == x.instruction.stage)
            assert x.start >= last_w - 1e-9
        first, second = reductions
        assert second.start >= first.end - 1e-9  # one at a time on the rank's network
        step = next(x for x in spans if x.instruction.op.name == "STEP")
        last_compute = max(y.end for y in spans if y.instruction.op.is_compute)
        # exposed: how much later STEP starts than when the rank's compute was done
        assert stats.exposed_reduce == pytest.approx(max(0.0, second.end - last_compute))
        assert step.start == pytest.approx(last_compute + stats.exposed_reduce)
        assert 0 < stats.exposed_reduce < stats.reduce  # the first chunk's reduction is hidden
    assert base.makespan < dp.makespan < base.makespan + 2 * reduce


def test_zero_one_all_reduces_then_gathers_the_parameters_after_the_step():
    """As the executor runs it (ZeroRedundancyOptimizer): full gradients all-reduced, then
    the updated parameters gathered; ZeRO-1 saves memory and costs time."""
    single, replicated = programs("1f1b", 2, 4, 1, 8000, dp=4)
    c = costs(2)
    base = simulate(single, c)
    plain = simulate(replicated, c, dp=4)
    zero = simulate(replicated, c, dp=4, zero=1)
    reduce, gather = c.all_reduce(8000, 4), c.reduce_scatter(8000, 4)
    assert [s.exposed_reduce for s in zero.per_rank] == pytest.approx([reduce] * 2)
    assert zero.makespan == pytest.approx(base.makespan + reduce + gather)
    assert zero.makespan == pytest.approx(plain.makespan + gather)


def test_reductions_are_on_the_trace():
    _, replicated = programs("1f1b", 2, 4, 1, 1000, dp=2)
    timeline = simulate(replicated, costs(2), dp=2)
    events = [e for e in trace_events(timeline)["traceEvents"] if e.get("cat") == "REDUCE_GRAD"]
    assert sorted(e["pid"] for e in events) == [0, 1]
    assert all(e["dur"] > 0 and e["args"]["bytes"] == 1000 for e in events)


def test_cli_simulate_dp_shows_reductions_and_their_exposed_time(tmp_path):
    spec = "F=1,I=1,W=1,param_bytes=4000,collective_latency=0.5,collective_bandwidth=1000"
    done = ppc("simulate", "1f1b", "-r", "2", "-m", "4", "--dp", "4", "--costs", spec, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["dp"] == 4 and doc["exposed_reduce"] == pytest.approx(9.0)
    assert [r["exposed_reduce"] for r in doc["per_rank"]] == pytest.approx([9.0, 9.0])
    one = json.loads(ppc("simulate", "1f1b", "-r", "2", "-m", "4", "--costs", spec, "--json").stdout)
    assert doc["makespan"] == pytest.approx(one["makespan"] + 9.0)
    text = ppc("simulate", "1f1b", "-r", "2", "-m", "4", "--dp", "4", "--costs", spec, "--width", "60",
               env={"COLUMNS": "200"}).stdout
    assert "exposed reduce" in text and "REDUCE_GRAD" in text and "  net" in text
    assert "DP 4 x PP 2 = 8 ranks" in text
    bad = ppc("simulate", "1f1b", "-r", "2", "-m", "4", "--dp", "0")
    assert bad.returncode == 2 and "--dp needs at least 1" in bad.stderr and "Traceback" not in bad.stderr

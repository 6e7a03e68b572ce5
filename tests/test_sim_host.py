"""Host terms of the cost model: ranks sharing CPU cores, posting cost, STEP as a sync."""

from __future__ import annotations

import dataclasses
import json

import pytest
from ppc.sim.timeline import _SharedCores, simulate

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.errors import CostError
from ppc.ir.program import TensorSpec
from ppc.ir.stage_graph import StageGraph, StageValue
from ppc.lang import load_schedule
from ppc.verify.graph import build

SCHEDULES = [("gpipe", 4, 8, None), ("1f1b", 4, 8, None), ("interleaved_1f1b", 2, 4, 2), ("zb_h1", 3, 6, None),
             ("zbv", 2, 4, 2)]


def program_of(name, ranks, microbatches, virtual, costs):
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    return lower(order, None, costs=costs), order


def varied(stages: int, **extra) -> CostModel:
    return CostModel(
        forward=tuple(1.0 + 0.3 * s for s in range(stages)),
        backward_input=tuple(1.2 + 0.1 * s for s in range(stages)),
        backward_weight=tuple(0.8 + 0.2 * (s % 2) for s in range(stages)),
        latency=0.05, optimizer=tuple(0.5 + 0.1 * s for s in range(stages)), **extra,
    )


@pytest.mark.parametrize(("name", "ranks", "microbatches", "virtual"), SCHEDULES)
def test_shared_engine_with_enough_cores_equals_the_one_device_per_rank_pass(name, ranks, microbatches, virtual):
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    costs = varied(order.stages, post=0.02)
    program = lower(order, None, costs=costs)
    fast = simulate(program, costs)
    start, end, _, busy = _SharedCores(build(program), dataclasses.replace(costs, cores=float(ranks))).run()
    assert end == pytest.approx(fast.end)
    assert start == pytest.approx(fast.start)
    assert busy == pytest.approx([s.busy for s in fast.per_rank])


@pytest.mark.parametrize(("name", "ranks", "microbatches", "virtual"), SCHEDULES)
def test_one_core_serializes_all_work(name, ranks, microbatches, virtual):
    """With one core and free transfers some rank can always compute, so the step takes
    exactly the sum of every op, posting and optimizer step."""
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    costs = dataclasses.replace(varied(order.stages), latency=0.0, cores=1.0)
    program = lower(order, None, costs=costs)
    work = sum(costs.duration(a.kind.value, a.stage) for row in order.compute for a in row)
    work += sum(costs.optimizer)
    assert simulate(program, costs).makespan == pytest.approx(work)


def test_two_cores_for_four_ranks_lie_between_the_bounds():
    order = load_schedule("1f1b").expand(ranks=4, microbatches=8)
    costs = CostModel.uniform(4, F=1.0, I=1.0, W=1.0)
    program = lower(order, None, costs=costs)
    alone = simulate(program, costs).makespan
    shared = simulate(program, dataclasses.replace(costs, cores=2.0)).makespan
    total = 4 * 8 * 3.0
    assert max(alone, total / 2) <= shared <= total
    # fewer effective cores, longer step
    assert simulate(program, dataclasses.replace(costs, cores=1.5)).makespan > shared
    # two threads per rank on two cores: only one rank at a time at full speed
    assert simulate(program, dataclasses.replace(costs, cores=2.0, threads=2)).makespan == pytest.approx(total)


def test_posting_a_group_costs_its_rank_before_the_sends_leave():
    spec = TensorSpec(name="h", shape=(1,), dtype="float32", bytes=4)
    graph = StageGraph(num_stages=2, values=(StageValue(name="h", producer=0, consumers=(1,), spec=spec),))
    costs = CostModel.uniform(2, F=1.0, I=0.5, W=0.5)
    order = load_schedule("gpipe").expand(ranks=2, microbatches=1)
    program = lower(order, graph, costs=costs)
    plain = simulate(program, costs, graph=graph)
    posted = simulate(program, dataclasses.replace(costs, post=0.25), graph=graph)
    spans = {str(s.instruction): s for s in posted.spans()}
    assert spans["0SEND_F0"].start == pytest.approx(1.25)  # 0F0 ends at 1, then the post
    # rank 1 posted its receive at 0 while rank 0 computed: hidden
    assert spans["1F0"].start == pytest.approx(1.25)
    # on the chain: rank 0's [SEND_F0, RECV_B0] and rank 1's [SEND_B0]
    assert posted.makespan == pytest.approx(plain.makespan + 2 * 0.25)


def test_sends_of_a_group_leave_before_its_receives_are_waited_for():
    """Rank 1 of 1F1B posts [RECV_F, SEND_B] together: the executor sends the gradient
    before it waits for the next activation."""
    order = load_schedule("1f1b").expand(ranks=2, microbatches=4)
    costs = dataclasses.replace(CostModel.uniform(2, F=1.0, I=1.0, W=1.0), latency=0.5)
    timeline = simulate(lower(order, None, costs=costs), costs)
    row = list(timeline.spans(rank=1))
    waited = 0
    for prev, span, nxt in zip(row, row[1:], row[2:]):
        if span.instruction.op.name == "RECV_F" and nxt.instruction.op.name == "SEND_B" and not prev.instruction.op.is_comm:
            assert nxt.start == pytest.approx(span.start)
            waited += span.end > nxt.start
    assert waited  # at least one receive waited while its group's send had already left


def test_step_waits_for_every_rank_then_the_norm_all_reduce():
    order = load_schedule("1f1b").expand(ranks=3, microbatches=3)
    costs = dataclasses.replace(CostModel.uniform(3, F=1.0, I=1.0, W=1.0), latency=0.1, optimizer=(0.5, 1.0, 2.0))
    timeline = simulate(lower(order, None, costs=costs), costs)
    steps = [s for s in timeline.spans() if s.instruction.op.name == "STEP"]
    reached = max(s.start for s in steps)
    for s in steps:
        assert s.end == pytest.approx(reached + costs.transfer(8) + costs.optimizer[s.rank])
    assert timeline.makespan == pytest.approx(reached + costs.transfer(8) + 2.0)


def test_host_terms_round_trip_through_json_and_inline():
    costs = CostModel.from_dict({"F": 1, "comm": {"latency": 0.1, "post": 0.002}, "host": {"cores": 1.5, "threads": 2}}, 2)
    assert (costs.post, costs.cores, costs.threads) == (0.002, 1.5, 2)
    again = CostModel.from_dict(costs.to_dict(), 2)
    assert (again.post, again.cores, again.threads) == (0.002, 1.5, 2)
    inline = CostModel.parse_inline("F=1,post=0.01,cores=2", 3)
    assert (inline.post, inline.cores, inline.threads) == (0.01, 2.0, 1)
    assert inline.shares_cores(3) and not inline.shares_cores(2)
    assert "host" not in CostModel.uniform(2).to_dict()


@pytest.mark.parametrize("bad", [{"host": {"cores": 0}}, {"host": {"cores": 2, "threads": 0}}, {"comm": {"post": -1}}])
def test_bad_host_terms_are_one_line_errors(bad):
    with pytest.raises(CostError, match="costs: "):
        CostModel.from_dict({"F": 1, **bad}, 2)


def test_simulate_cli_says_when_ranks_share_cores(capsys):
    from ppc.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "1f1b", "--ranks", "4", "--microbatches", "8", "--costs", "F=1,cores=2", "--width", "60"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "4 ranks share 2 cores of one host" in out
    with pytest.raises(SystemExit):
        main(["simulate", "1f1b", "--ranks", "4", "--microbatches", "8", "--costs", "F=1,cores=2", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["host"] == {"cores": 2.0, "threads": 1, "post": 0.0}
    # 4 ranks of F=1, B=2 on 2 cores: at least half the total work of 4 x 8 x 3
    assert doc["makespan"] >= 48.0

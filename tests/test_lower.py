"""Lowering: compute orders (+ stage graphs) -> per-rank instruction lists."""

from __future__ import annotations

import pytest
from ppc.sim.timeline import simulate

from ppc.compiler import compile_program
from ppc.compiler.lower import index_order, lower
from ppc.compiler.predict import cross_rank_deps, predict
from ppc.costs import CostModel
from ppc.errors import DeadlockError, ValidationError
from ppc.ir.order import Action, ComputeOrder
from ppc.ir.program import Op, TensorSpec
from ppc.ir.routes import plan_routes
from ppc.ir.stage_graph import INPUT, StageGraph, StageValue, TiedWeight, synthetic_chain
from ppc.lang import load_schedule


def order_of(rows: list[str], *, placement: tuple[int, ...] | None = None, name="hand") -> ComputeOrder:
    """ComputeOrder from rows like "0F0 0F1 0B0 0B1" (one string per rank)."""
    compute = tuple(tuple(Action.parse(a) for a in row.split()) for row in rows)
    actions = [a for row in compute for a in row]
    stages = max(a.stage for a in actions) + 1
    placement = placement or tuple(range(stages))
    return ComputeOrder(
        schedule=name, ranks=len(rows), stages=stages,
        microbatches=max(a.mb for a in actions) + 1, placement=placement, compute=compute,
    )


def listing(program) -> list[list[str]]:
    return [[str(i) for i in row] for row in program.instructions]


def spec(name: str, nbytes: int = 64) -> TensorSpec:
    return TensorSpec(name=name, shape=(4, 4), dtype="float32", bytes=nbytes)


def test_two_rank_1f1b_listing_is_golden():
    order = order_of(["0F0 0F1 0B0 0B1", "1F0 1B0 1F1 1B1"])
    program = compile_program(order)
    assert listing(program) == [
        ["0F0", "0SEND_F0", "0F1", "0SEND_F1", "0RECV_B0", "0B0", "0RECV_B1", "0B1", "0STEP0"],
        ["1RECV_F0", "1F0", "1B0", "1RECV_F1", "1SEND_B0", "1F1", "1B1", "1SEND_B1", "1STEP0"],
    ]
    sends = [i for i in program.instructions[0] if i.op is Op.SEND_F]
    assert [(i.peer, i.peer_stage) for i in sends] == [(1, 1), (1, 1)]


def test_each_receive_sits_right_before_its_consumer_when_nothing_else_runs():
    program = compile_program(load_schedule("1f1b").expand(ranks=4, microbatches=8))
    for row in program.instructions:
        for i, instr in enumerate(row):
            if instr.op is Op.RECV_F:
                nxt = next(x for x in row[i + 1:] if x.op.is_compute)
                assert (nxt.op, nxt.stage, nxt.mb) == (Op.F, instr.stage, instr.mb)


def test_no_communication_between_stages_on_one_rank():
    order = load_schedule("zbv").expand(ranks=4, microbatches=8, virtual=2)
    program = compile_program(order)
    rank3 = program.instructions[3]  # zbv puts stages 3 and 4 on rank 3
    assert not any(i.op.is_comm and i.peer == 3 for i in rank3)
    comm = [i for row in program.instructions for i in row if i.op.is_comm]
    assert all(program.placement[i.stage] != program.placement[i.peer_stage] for i in comm)
    # 8 stages, 7 boundaries of which 1 is local: 6 cross-rank boundaries x 8 mb x 2 dirs x 2 ends
    assert len(comm) == 6 * 8 * 2 * 2


def test_step_is_last_once_per_rank():
    program = compile_program(load_schedule("interleaved_1f1b").expand(ranks=2, microbatches=4, virtual=2))
    for row in program.instructions:
        assert row[-1].op is Op.STEP
        assert sum(i.op is Op.STEP for i in row) == 1


def model_graph() -> StageGraph:
    """Stage 0 -> 1 -> 2 -> 3 with a skip 0 -> 3, a mask from the batch, a recomputed rope."""
    return StageGraph(
        num_stages=4,
        values=(
            StageValue(name="ids", producer=INPUT, consumers=(0,), spec=spec("ids"), requires_grad=False),
            StageValue(name="h0", producer=0, consumers=(1,), spec=spec("h0")),
            StageValue(name="skip", producer=0, consumers=(3,), spec=spec("skip", 32)),
            StageValue(name="mask", producer=0, consumers=(1, 3), spec=spec("mask", 8), requires_grad=False),
            StageValue(name="rope", producer=0, consumers=(1, 2, 3), spec=spec("rope"), recompute=True),
            StageValue(name="h1", producer=1, consumers=(2,), spec=spec("h1")),
            StageValue(name="h2", producer=2, consumers=(3,), spec=spec("h2")),
        ),
        tied=(TiedWeight(name="embed.weight", stages=(0, 3), spec=spec("embed.weight", 1024)),),
    )


def test_values_go_once_per_consumer_rank_never_relayed():
    order = load_schedule("1f1b").expand(ranks=4, microbatches=2)
    program = compile_program(order, model_graph())
    rank0 = program.instructions[0]
    sends = [i for i in rank0 if i.op is Op.SEND_F and i.mb == 0]
    by_peer = {i.peer: [t.name for t in i.tensors] for i in sends}
    assert by_peer == {1: ["h0", "mask"], 3: ["skip", "mask"]}
    # stage 1 never forwards the skip connection or the mask
    rank1 = program.instructions[1]
    assert all("skip" not in [t.name for t in i.tensors] for i in rank1)
    # gradients: only requires_grad values come back; the mask's never does
    grads = {i.peer: [t.name for t in i.tensors] for i in rank0 if i.op is Op.RECV_B and i.mb == 0}
    assert grads == {1: ["h0"], 3: ["skip"]}
    # nothing carries the recomputed rope or the batch input
    names = {t.name for row in program.instructions for i in row for t in i.tensors}
    assert "rope" not in names and "ids" not in names
    assert any("rope" in note and "recomputed" in note for note in program.notes)


def test_tied_weights_reduced_once_per_owner_rank_before_step():
    program = compile_program(load_schedule("1f1b").expand(ranks=4, microbatches=2), model_graph())
    for rank, row in enumerate(program.instructions):
        tied = [i for i in row if i.op is Op.REDUCE_TIED]
        if rank in (0, 3):
            assert [i.op for i in row[-2:]] == [Op.REDUCE_TIED, Op.STEP]
            assert [t.name for t in tied[0].tensors] == ["embed.weight"]
            last_backward = max(j for j, i in enumerate(row) if i.op in (Op.B, Op.W))
            assert row.index(tied[0]) > last_backward
        else:
            assert tied == []
    assert any("tied weight embed.weight" in note for note in program.notes)
    # the collective waits for both owners: rank 0 finishes its backwards last
    costs = CostModel.from_dict({"comm": {"latency": 0.5}}, 4)
    timeline = simulate(program, costs, graph=model_graph())
    reduce = [s for s in timeline.spans() if s.instruction.op is Op.REDUCE_TIED]
    assert len(reduce) == 2 and reduce[0].end == reduce[1].end
    # then STEP syncs every rank on the gradient norm (one latency) and is free here
    assert timeline.makespan == reduce[0].end + costs.transfer(8)
    assert reduce[1].start < reduce[0].start  # rank 3 arrives first and waits


def test_gradient_leaves_after_the_last_backward_of_the_consumer_stages_on_that_rank():
    # stages 1 and 2 both read stage 0's value and sit on rank 1 (V-shape of 2 ranks x 2)
    graph = StageGraph(
        num_stages=4,
        values=(
            StageValue(name="a", producer=0, consumers=(1, 2), spec=spec("a")),
            StageValue(name="b", producer=1, consumers=(2,), spec=spec("b")),
            StageValue(name="c", producer=2, consumers=(3,), spec=spec("c")),
        ),
    )
    order = load_schedule("zbv").expand(ranks=2, microbatches=2, virtual=2)
    program = compile_program(order, graph)
    row = program.instructions[order.placement[1]]
    for mb in range(2):
        send = next(j for j, i in enumerate(row) if i.op is Op.SEND_B and i.peer_stage == 0 and i.mb == mb)
        backwards = [j for j, i in enumerate(row) if i.op in (Op.B, Op.I) and i.stage in (1, 2) and i.mb == mb]
        assert send > max(backwards)


def test_cross_rank_cycle_is_reported_as_a_cycle_of_waits():
    order = order_of(["0F0 0B0 0F1 0B1", "1F0 1F1 1B0 1B1"])
    with pytest.raises(DeadlockError) as err:
        lower(order)
    assert str(err.value) == "deadlock: rank 0 waits at 0B0 for 1B0; rank 1 waits at 1F1 for 0F1"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["0F0 0B0 0F1", "1F0 1B0 1F1 1B1"], "rank 0: stage 0 microbatch 1 has no backward"),
        (["0F0 0F0 0B0", "1F0 1B0"], "rank 0 position 1: 0F0 runs twice (first at rank 0 position 0)"),
        (["0B0 0F0", "1F0 1B0"], "rank 0 position 0: 0B0 comes before 0F0 (at rank 0 position 1), which it needs"),
        (["0F0 0W0 0I0", "1F0 1B0"], "rank 0 position 1: 0W0 comes before 0I0"),
        (["0F0 0I0", "1F0 1B0"], "rank 0: 0I0 runs but 0W0 never does"),
        (["0F0 0B0 1F0", "1B0"], "rank 0 position 2: 1F0 runs on rank 0, but stage 1 is placed on rank 1"),
    ],
)
def test_malformed_orders_fail_with_one_precise_line(rows, message):
    order = order_of(rows, placement=(0, 1))
    with pytest.raises(ValidationError) as err:
        lower(order)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_local_data_order_is_checked():
    # both stages on rank 0; stage 1 reads stage 0's output but runs first
    order = order_of(["1F0 0F0 1B0 0B0"], placement=(0, 0))
    with pytest.raises(ValidationError, match="1F0 comes before 0F0 \\(at rank 0 position 1\\), whose output"):
        lower(order)


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "interleaved_1f1b", "looped_bfs", "zb_h1", "zbv"])
@pytest.mark.parametrize(("ranks", "microbatches"), [(2, 2), (3, 5), (4, 8)])
def test_builtins_lower_to_valid_programs_that_keep_the_predicted_timeline(name, ranks, microbatches):
    virtual = 2 if name in ("interleaved_1f1b", "looped_bfs", "zbv") else None
    if name == "interleaved_1f1b" and microbatches % ranks:
        pytest.skip("interleaved 1F1B needs M % R == 0")
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    program = compile_program(order)
    compute = [[str(i) for i in row if i.op.is_compute] for row in program.instructions]
    assert compute == [[str(a) for a in row] for row in order.compute]
    # with free communication, the program runs exactly the predicted timeline, also
    # under uneven costs: no receive ever delays compute
    costs = CostModel.from_dict({"F": 1, "I": 1.5, "W": 0.5}, order.stages)
    index = index_order(order, plan_routes(synthetic_chain(order.stages), order.placement))
    routes = plan_routes(synthetic_chain(order.stages), order.placement)
    predicted = predict(index, order.ranks, cross_rank_deps(index, routes, costs), costs)
    timeline = simulate(lower(order, costs=costs), costs)
    assert [s.start for s in timeline.spans(compute_only=True)] == predicted.start

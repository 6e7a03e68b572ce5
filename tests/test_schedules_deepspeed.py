"""Built-in schedules against DeepSpeed's pipeline schedules (deepspeed.runtime.pipe.schedule).

TrainSchedule runs ppc's 1f1b op for op, InferenceSchedule runs gpipe's forwards, and
DualPipeVSchedule runs dualpipev once dualpipev's split backward is read as one B. The
transfers are the same messages in the same order per kind, placed differently (DeepSpeed:
lock-step steps paired by stage parity; ppc: placed by the predicted timeline). See
docs/language.md, "DeepSpeed's schedules".
"""

from __future__ import annotations

import pytest
from conftest import ppc_orders

from ppc.compiler import compile_program
from ppc.errors import PpcError
from ppc.lang import builtin_schedules, load_schedule

ds = pytest.importorskip(
    "deepspeed.runtime.pipe.schedule",
    reason="deepspeed is not installed (the `test` extra brings it: pip install -e '.[test]')",
)

GRID = [(r, m) for r in range(1, 9) for m in range(1, 17)]
TRANSFERS = ("SEND_F", "RECV_F", "SEND_B", "RECV_B")

# DeepSpeed's instruction -> ppc's op name (LoadMicroBatch and the step-end reductions and
# optimizer step have no per-microbatch counterpart and are left out).
_NAMES = {
    "ForwardPass": "F",
    "BackwardPass": "B",
    "SendActivation": "SEND_F",
    "RecvActivation": "RECV_F",
    "SendGrad": "SEND_B",
    "RecvGrad": "RECV_B",
}


def is_compute(op: str) -> bool:
    return "SEND" not in op and "RECV" not in op


def deepspeed_steps(schedule_class, ranks: int, microbatches: int, stage: int) -> list[list[str]]:
    """One stage's steps of a TrainSchedule or InferenceSchedule of `ranks` stages, each
    instruction named like ppc's (`1F0`, `1SEND_F0`).

    Instructions name buffers, not microbatches. The microbatch of each is read from what
    its buffer holds: a stage's forwards run the microbatches in order (stage 0 loads them
    in order, every other stage receives them in its predecessor's order), so the k-th
    ForwardPass and the k-th RecvActivation are microbatch k; SendActivation and RecvGrad
    concern the microbatch whose forward last wrote their buffer; BackwardPass frees it;
    SendGrad sends what the last backward in its buffer produced. Each buffer is checked
    against DeepSpeed's cyclic allocation (microbatch % num_pipe_buffers()), and a
    training forward never overwrites a buffer whose backward has not run.
    """
    schedule = schedule_class(micro_batches=microbatches, stages=ranks, stage_id=stage)
    buffers = schedule.num_pipe_buffers()
    training = isinstance(schedule, ds.TrainSchedule)
    forwards = receives = 0
    holds: dict[int, int] = {}
    backed: dict[int, int] = {}
    steps = []
    for step in schedule:
        row = []
        for instruction in step:
            name = _NAMES.get(type(instruction).__name__)
            if name is None:
                continue
            buffer = instruction.buffer_id
            if name == "RECV_F":
                mb, receives = receives, receives + 1
            elif name == "F":
                assert not (training and buffer in holds), f"stage {stage} overwrites {buffer}"
                mb, forwards = forwards, forwards + 1
                holds[buffer] = mb
            elif name in ("SEND_F", "RECV_B"):
                mb = holds[buffer]
            elif name == "B":
                mb = backed[buffer] = holds.pop(buffer)
            else:
                mb = backed[buffer]
            assert buffer == mb % buffers, f"stage {stage}: {name} of microbatch {mb} in {buffer}"
            row.append(f"{stage}{name}{mb}")
        steps.append(row)
    return steps


def deepspeed_orders(schedule_class, ranks: int, microbatches: int) -> list[list[str]]:
    """Per stage, the ForwardPass/BackwardPass sequence of a DeepSpeed schedule."""
    return [
        [op for step in deepspeed_steps(schedule_class, ranks, microbatches, stage)
         for op in step if is_compute(op)]
        for stage in range(ranks)
    ]


def deepspeed_dualpipev(ranks: int, microbatches: int) -> list[list[str]]:
    """Per rank, the compute order of DeepSpeed's DualPipeVSchedule as ppc actions. Its
    buffer is phase * M + microbatch; phase 0 runs stage `rank`, phase 1 stage 2R - 1 - rank."""
    rows = []
    for rank in range(ranks):
        row = []
        for step in ds.DualPipeVSchedule(micro_batches=microbatches, stages=ranks, stage_id=rank):
            for instruction in step:
                name = _NAMES.get(type(instruction).__name__)
                if name not in ("F", "B"):
                    continue
                phase, mb = divmod(instruction.buffer_id, microbatches)
                assert phase == instruction.phase
                row.append(f"{rank if phase == 0 else 2 * ranks - 1 - rank}{name}{mb}")
        rows.append(row)
    return rows


def _one_b_per_backward(name: str, ranks: int, microbatches: int, virtual: int) -> list[list[str]]:
    """A ppc order with each overlapped pair read as its parts in order, each I read as the
    whole backward (a B in its place) and each W dropped: a schedule that keeps weight
    gradients inside the backward, as DeepSpeed's DualPipeV does."""
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    rows = []
    for row in order.compute:
        parts = [p for a in row for p in (a.parts or (a,))]
        rows.append([str(p).replace("I", "B") for p in parts if "W" not in str(p)])
    return rows


@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_1f1b_is_deepspeeds_train_schedule(ranks: int, microbatches: int) -> None:
    assert ppc_orders("1f1b", ranks, microbatches) == deepspeed_orders(
        ds.TrainSchedule, ranks, microbatches
    )


@pytest.mark.parametrize(("ranks", "microbatches"), [(4, 8), (8, 16), (3, 7)])
def test_1f1b_is_the_only_builtin_equal_to_train_schedule(ranks: int, microbatches: int) -> None:
    theirs = deepspeed_orders(ds.TrainSchedule, ranks, microbatches)
    equal = []
    for name in builtin_schedules():
        try:
            if ppc_orders(name, ranks, microbatches) == theirs:
                equal.append(name)
        except PpcError:  # needs V > 1, or more microbatches
            continue
    assert equal == ["1f1b"]


def test_train_schedule_step_count_is_1f1b_makespan_at_unit_costs() -> None:
    """2 (M + R - 1) lock-step steps, one op per stage per step at most, each stage busy in 2M."""
    for ranks, microbatches in GRID:
        for stage in range(ranks):
            steps = deepspeed_steps(ds.TrainSchedule, ranks, microbatches, stage)
            assert len(steps) == 2 * (microbatches + ranks - 1)
            computes = [[op for op in step if is_compute(op)] for step in steps]
            assert all(len(c) <= 1 for c in computes)
            assert sum(map(len, computes)) == 2 * microbatches


@pytest.mark.parametrize("ranks", range(1, 9))
def test_inference_schedule_runs_gpipes_forwards(ranks: int) -> None:
    for microbatches in range(1, 17):
        gpipe = ppc_orders("gpipe", ranks, microbatches)
        forwards = [[a for a in row if "F" in a] for row in gpipe]
        assert forwards == deepspeed_orders(ds.InferenceSchedule, ranks, microbatches)


@pytest.mark.parametrize("ranks", range(1, 9))
def test_dualpipev_is_deepspeeds_with_its_split_backward_as_one(ranks: int) -> None:
    for microbatches in range(2 * ranks, 17):  # both need M >= 2R
        ours = _one_b_per_backward("dualpipev", ranks, microbatches, 2)
        assert ours == deepspeed_dualpipev(ranks, microbatches), (ranks, microbatches)


@pytest.mark.parametrize("ranks", range(1, 9))
def test_1f1b_sends_and_receives_the_same_messages_in_the_same_order(ranks: int) -> None:
    for microbatches in (1, 2, ranks, 2 * ranks, 16):
        order = load_schedule("1f1b").expand(ranks=ranks, microbatches=microbatches)
        program = compile_program(order)
        for stage in range(ranks):
            steps = deepspeed_steps(ds.TrainSchedule, ranks, microbatches, stage)
            theirs = [op for step in steps for op in step]
            ours = [str(i) for i in program.instructions[stage]]
            for kind in TRANSFERS:
                assert [op for op in ours if kind in op] == [op for op in theirs if kind in op]


def test_deepspeed_pairs_each_send_with_its_receive_in_the_same_step() -> None:
    """What makes DeepSpeed's steps safe to run with blocking sends: stage parity decides
    which of two neighbours runs a forward step, so a SEND and its RECV share a step index."""
    for ranks, microbatches in GRID:
        steps = [deepspeed_steps(ds.TrainSchedule, ranks, microbatches, s) for s in range(ranks)]
        for stage in range(ranks - 1):
            for index, (mine, next_stage) in enumerate(zip(steps[stage], steps[stage + 1])):
                sent_f = [op.split("SEND_F")[1] for op in mine if "SEND_F" in op]
                got_f = [op.split("RECV_F")[1] for op in next_stage if "RECV_F" in op]
                sent_b = [op.split("SEND_B")[1] for op in next_stage if "SEND_B" in op]
                got_b = [op.split("RECV_B")[1] for op in mine if "RECV_B" in op]
                assert (sent_f, sent_b) == (got_f, got_b), (ranks, microbatches, stage, index)


def test_the_placement_difference_in_the_docs() -> None:
    """docs/language.md shows rank 1 of R = 4, M = 4: DeepSpeed sends an output one step
    after its forward; ppc posts the next input's receive with it, before the next forward."""
    theirs = deepspeed_steps(ds.TrainSchedule, 4, 4, 1)
    assert " | ".join(" ".join(step) for step in theirs[:5]) == (
        " | 1RECV_F0 1F0 | 1SEND_F0 | 1RECV_F1 1F1 | 1SEND_F1"
    )
    program = compile_program(load_schedule("1f1b").expand(ranks=4, microbatches=4))
    assert " ".join(str(i) for i in program.instructions[1][:8]) == (
        "1RECV_F0 1F0 1RECV_F1 1SEND_F0 1F1 1RECV_F2 1SEND_F1 1F2"
    )

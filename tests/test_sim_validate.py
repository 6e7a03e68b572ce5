"""Validation of programs: every malformation gets one precise line."""

from __future__ import annotations

import dataclasses

import networkx as nx
import pytest

from ppc.compiler import compile_program
from ppc.errors import DeadlockError, ValidationError
from ppc.ir.program import Instruction, Op, Program
from ppc.lang import load_schedule
from ppc.verify.graph import build, to_networkx
from ppc.verify.program import validate


def program_1f1b(ranks=2, microbatches=2) -> Program:
    return compile_program(load_schedule("1f1b").expand(ranks=ranks, microbatches=microbatches))


def edit(program: Program, rank: int, change) -> Program:
    rows = [list(row) for row in program.instructions]
    rows[rank] = change(rows[rank])
    return dataclasses.replace(program, instructions=tuple(tuple(r) for r in rows))


def find(row, text: str) -> int:
    return next(i for i, instr in enumerate(row) if str(instr) == text)


def test_lowered_program_is_valid_and_its_networkx_graph_acyclic():
    program = program_1f1b(3, 4)
    validate(program)
    graph = to_networkx(build(program))
    assert nx.is_directed_acyclic_graph(graph)
    assert graph.number_of_nodes() == sum(len(r) for r in program.instructions)
    # data edges are there: 0F0 -> 1F0 across ranks, and F -> B on a stage
    names = {(d["rank"], d["instr"]): n for n, d in graph.nodes(data=True)}
    assert nx.has_path(graph, names[(0, "0F0")], names[(1, "1F0")])
    assert graph.has_edge(names[(1, "1F0")], names[(1, "1B0")])


def test_send_after_a_receive_deadlocks_with_the_cycle_of_waits():
    # rank 1 receives microbatch 1 before it sends 0's gradient back; if rank 0 waits for
    # that gradient before sending microbatch 1, both wait forever
    def rank0(row):
        send = row.pop(find(row, "0SEND_F1"))
        row.insert(find(row, "0RECV_B0") + 1, send)
        return row

    program = edit(program_1f1b(), 0, rank0)
    assert [str(i) for i in program.instructions[1]][3:5] == ["1RECV_F1", "1SEND_B0"]
    with pytest.raises(DeadlockError) as err:
        validate(program)
    assert str(err.value) == "deadlock: rank 0 waits at 0B0 for 1B0; rank 1 waits at 1F1 for 0F1"


def test_missing_compute_op():
    program = edit(program_1f1b(), 1, lambda row: [i for i in row if str(i) != "1B1"])
    with pytest.raises(ValidationError, match=r"^rank 1: stage 1 microbatch 1 has no backward"):
        validate(program)


def test_duplicate_compute_op():
    program = edit(program_1f1b(), 0, lambda row: row[:1] + row[:1] + row[1:])
    with pytest.raises(ValidationError, match=r"^rank 0 position 1: 0F0 runs twice \(first at rank 0 position 0\)$"):
        validate(program)


def test_unmatched_send():
    program = edit(program_1f1b(), 1, lambda row: [i for i in row if str(i) != "1RECV_F1"])
    with pytest.raises(ValidationError, match=r"^unmatched send 0SEND_F1 on rank 0 \(position \d+\): nobody "
                       r"receives the activations of stage 0 microbatch 1 from rank 0 to rank 1$"):
        validate(program)


def test_receive_of_a_different_spec_is_rejected():
    from ppc.ir.program import TensorSpec

    def change(row):
        i = find(row, "1RECV_F0")
        row[i] = dataclasses.replace(row[i], tensors=(TensorSpec(name="x", shape=(1,), dtype="f32", bytes=4),))
        return row

    with pytest.raises(ValidationError, match="disagree on stages or tensor specs"):
        validate(edit(program_1f1b(), 1, change))


def test_receive_after_its_consumer():
    def late(row):
        recv = row.pop(find(row, "1RECV_F0"))
        row.insert(find(row, "1F0") + 1, recv)
        return row

    with pytest.raises(ValidationError, match=r"^1F0 on rank 1 \(position 0\) runs before 1RECV_F0"):
        validate(edit(program_1f1b(), 1, late))


def test_send_before_its_producer():
    def early(row):
        send = row.pop(find(row, "0SEND_F0"))
        row.insert(0, send)
        return row

    with pytest.raises(ValidationError, match=r"^0SEND_F0 on rank 0 \(position 0\) sends before 0F0"):
        validate(edit(program_1f1b(), 0, early))


def test_missing_transfer_pair():
    def drop(row):
        return [i for i in row if str(i) not in ("0SEND_F1", "1RECV_F1")]

    program = edit(edit(program_1f1b(), 0, drop), 1, drop)
    with pytest.raises(ValidationError, match=r"^missing transfer: 1F1 on rank 1 .* needs the activations of "
                       r"stage 0 microbatch 1 from rank 0 to rank 1, which is never sent$"):
        validate(program)


def test_step_must_be_last():
    program = edit(program_1f1b(), 0, lambda row: row[-1:] + row[:-1])
    with pytest.raises(ValidationError, match="rank 0: STEP must be the last instruction"):
        validate(program)


def test_bad_peer():
    def change(row):
        i = find(row, "0SEND_F0")
        row[i] = dataclasses.replace(row[i], peer=0)
        return row

    with pytest.raises(ValidationError, match=r"^rank 0: 0SEND_F0 has bad peer rank 0$"):
        validate(edit(program_1f1b(), 0, change))


def test_backward_before_forward_in_a_program():
    def swap(row):
        f, b = find(row, "1F0"), find(row, "1B0")
        row[f], row[b] = row[b], row[f]
        return row

    with pytest.raises(ValidationError, match=r"^rank 1 position \d+: 1B0 comes before 1F0"):
        validate(edit(program_1f1b(), 1, swap))


def test_unknown_instruction_kind():
    bad = Instruction(op=Op.F, stage=0, mb=0)
    object.__setattr__(bad, "op", "X")
    program = edit(program_1f1b(), 0, lambda row: [bad] + row)
    with pytest.raises(ValidationError, match=r"^rank 0: unknown instruction 'X'$"):
        validate(program)

"""Data-parallel gradient reduction as instructions: one REDUCE_GRAD per stage after its
last weight-gradient op, none with one replica, programs still verify."""

from __future__ import annotations

import pytest

from ppc.compiler import compile_program
from ppc.ir.stage_graph import synthetic_chain
from ppc.lang import load_schedule


@pytest.mark.parametrize(("name", "ranks", "microbatches", "virtual"),
                         [("1f1b", 4, 8, 1), ("zb_h1", 3, 6, 1), ("zbv", 2, 4, 2), ("dualpipev", 2, 4, 2),
                          ("interleaved_1f1b", 2, 4, 2)])
def test_one_reduction_per_stage_right_after_its_last_weight_gradient(name, ranks, microbatches, virtual):
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    graph = synthetic_chain(order.stages)
    graph = type(graph)(num_stages=graph.num_stages, values=graph.values,
                        param_bytes=tuple(1000 * (s + 1) for s in range(order.stages)))
    program = compile_program(order, graph, dp=2)
    for rank, row in enumerate(program.instructions):
        reduces = [(i, ins) for i, ins in enumerate(row) if ins.op.name == "REDUCE_GRAD"]
        assert sorted(ins.stage for _, ins in reduces) == sorted(order.stages_of(rank))
        for i, ins in reduces:
            weight_ops = [j for j, other in enumerate(row)
                          if any(p.stage == ins.stage and "weight_grad" in p.op.phases for p in other.parts or (other,))]
            assert max(weight_ops) < i  # after the last weight gradient of its stage
            assert all(row[j].op.name in ("REDUCE_GRAD", "STEP") or row[j].op.is_comm
                       or not any(p.stage == ins.stage for p in row[j].parts or (row[j],)) for j in range(i + 1, len(row)))
            assert ins.tensors[0].bytes == 1000 * (ins.stage + 1)
    single = compile_program(order, graph)
    assert not any(ins.op.name == "REDUCE_GRAD" for row in single.instructions for ins in row)

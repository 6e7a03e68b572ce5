"""Frontend routing, tensor specs, tied weights, balance and lowering of a real split."""

from __future__ import annotations

import pytest
import torch

from ppc.compiler.lower import lower
from ppc.frontend import build_model, build_split, split, trace
from ppc.frontend.split import balance, balanced_sizes, equal_layers, equal_sizes, stage_costs
from ppc.ir.program import Op
from ppc.ir.stage_graph import INPUT
from ppc.lang import load_schedule


@pytest.fixture(scope="module")
def tied_split():
    return build_split("tiny-llama-tied", stages=4, seq_len=16, microbatch_size=2)


def test_balanced_sizes_minimise_the_largest_stage():
    assert balanced_sizes([1, 1, 1, 1, 4], 2) == [4, 1]
    assert balanced_sizes([3, 1, 1, 1, 1, 1], 3) == [1, 2, 3]
    assert equal_sizes(10, 4) == [3, 3, 2, 2]
    assert balance([2.0, 2.0]) == 1.0 and balance([3.0, 1.0]) == 1.5


def test_every_value_has_one_producer_and_no_relay(tied_split):
    graph = tied_split.graph
    names = [v.name for v in graph.values]
    assert len(names) == len(set(names))
    sent = [v for v in graph.values if v.producer != INPUT and not v.recompute]
    assert [(v.producer, v.consumers) for v in sent] == [(0, (1,)), (1, (2,)), (2, (3,))]
    assert all(v.spec.shape == (2, 16, 64) and v.spec.dtype == "float32" for v in sent)
    assert all(v.spec.bytes == 2 * 16 * 64 * 4 and v.requires_grad for v in sent)
    batch = {v.name: v.consumers for v in graph.values if v.producer == INPUT}
    assert batch == {"input_ids": (0, 1, 2, 3), "labels": (3,)}


def test_cheap_parameter_free_values_are_recomputed_in_consumers(tied_split):
    recomputed = {v.name: v for v in tied_split.graph.values if v.recompute}
    assert {"leaf_create_causal_mask", "model_rotary_emb"} <= set(recomputed)
    for value in recomputed.values():
        assert value.consumers == (1, 2, 3) and not value.requires_grad
        for stage in value.consumers:
            module = tied_split.stages[stage].module
            assert value.name not in tied_split.stages[stage].inputs
            assert value.name in tied_split.stages[stage].recomputed
            assert any(n.name == value.name for n in module.graph.nodes)
    rotary = [n for n in tied_split.stages[2].module.graph.nodes if n.op == "call_module"
              and n.target == "model.rotary_emb"]
    assert len(rotary) == 1


def test_specs_match_the_real_tensors_sent():
    model = build_model("tiny-mistral", seed=0)
    ids = torch.randint(0, 256, (2, 16))
    result = split(trace(model, {"input_ids": ids, "labels": ids}), 3)
    specs = {v.name: v.spec for v in result.graph.values if not v.recompute}
    env = {"input_ids": ids, "labels": ids}
    with torch.no_grad():
        for stage in result.stages:
            for name in stage.inputs:
                assert tuple(env[name].shape) == specs[name].shape
                assert str(env[name].dtype) == f"torch.{specs[name].dtype}"
            env.update(zip(stage.outputs, stage.module(*[env[n] for n in stage.inputs])))


def test_tied_embedding_is_reported_with_param_names(tied_split):
    (tied,) = tied_split.graph.tied
    assert tied.name == "model.embed_tokens.weight" and tied.stages == (0, 3)
    assert tied.spec.shape == (256, 64)
    assert tied_split.stages[3].param_names["lm_head.weight"] == "model.embed_tokens.weight"
    assert tied_split.stages[0].param_names["model.embed_tokens.weight"] == tied.name
    assert all(b > 0 for b in tied_split.graph.activation_bytes)


@pytest.mark.parametrize("schedule,ranks,virtual", [("1f1b", 4, 1), ("interleaved_1f1b", 2, 2)])
def test_lowered_program_pairs_every_recv_with_a_send(tied_split, schedule, ranks, virtual):
    order = load_schedule(schedule).expand(ranks=ranks, microbatches=4, virtual=virtual)
    program = lower(order, tied_split.graph)
    sends, recvs = {}, []
    for rank, row in enumerate(program.instructions):
        for ins in row:
            key = (ins.mb, tuple((t.name, t.shape, t.dtype) for t in ins.tensors))
            if ins.op in (Op.SEND_F, Op.SEND_B):
                sends.setdefault((ins.op, key), []).append(rank)
            elif ins.op in (Op.RECV_F, Op.RECV_B):
                recvs.append((rank, ins, key))
    assert recvs
    for rank, ins, key in recvs:
        send = Op.SEND_F if ins.op is Op.RECV_F else Op.SEND_B
        assert ins.peer in sends[(send, key)], f"rank {rank} {ins} has no matching send"
    forward = {}
    for (op, key), ranks_ in sends.items():
        if op is Op.SEND_F:
            for name, _, _ in key[1]:
                forward.setdefault((name, key[0]), set()).update(ranks_)
    assert all(len(r) == 1 for r in forward.values())
    assert any(ins.op is Op.REDUCE_TIED for row in program.instructions for ins in row)


def test_llama_1b_cost_split_beats_equal_layers():
    result = build_split("llama-3.2-1b", stages=8, seq_len=256, microbatch_size=1)
    costs, reference = stage_costs(result), equal_layers(result)
    assert sum(costs) == pytest.approx(sum(reference))
    assert balance(costs) < balance(reference)
    assert result.stages[-1].layers[-1] == "model.layers.15"
    assert len(result.stages[-1].layers) < len(result.stages[1].layers)

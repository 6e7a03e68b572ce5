"""A small real model split by hand into stages, for executor tests without the frontend.

ToyLM: embedding (tied with the LM head), residual tanh blocks, and a skip connection
from the embedding to the last stage (a value sent to a non-adjacent stage), with a
Hugging Face style shifted cross-entropy loss. `toy_split(S)` cuts it into S stages with
the same StageGraph/StageModule shape as ppc.frontend. A helper module (not collected):
tests/test_exec_toy_model.py checks that the stages compose to the full model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ppc.ir.program import TensorSpec
from ppc.ir.stage_graph import INPUT, StageGraph, StageValue, TiedWeight

DIM, VOCAB, BLOCKS = 16, 256, 8


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(DIM, DIM)

    def forward(self, h):
        return h + torch.tanh(self.lin(h))


class ToyLM(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
        self.norm = nn.LayerNorm(DIM)

    def hidden(self, ids):
        return self.embed(ids)

    def head_loss(self, h, emb, labels):
        logits = F.linear(self.norm(h + emb), self.embed.weight)
        return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))

    def forward(self, input_ids, labels):
        emb = self.embed(input_ids)
        h = emb
        for block in self.blocks:
            h = block(h)
        return self.head_loss(h, emb, labels)


def toy_loss(model, batch):
    return model(batch["input_ids"], batch["labels"])


class ToyStage(nn.Module):
    def __init__(self, full: ToyLM, index: int, blocks: range, last: bool):
        super().__init__()
        self.index, self.first, self.last = index, index == 0, last
        if self.first or self.last:
            self.embed = nn.Embedding(VOCAB, DIM)
            self.embed.weight.data.copy_(full.embed.weight.data)
        self.blocks = nn.ModuleList(Block() for _ in blocks)
        for mine, theirs in zip(self.blocks, (full.blocks[i] for i in blocks)):
            mine.load_state_dict(theirs.state_dict())
        if last:
            self.norm = nn.LayerNorm(DIM)
            self.norm.load_state_dict(full.norm.state_dict())

    def forward(self, *args):
        if self.first:
            h = emb = self.embed(args[0])
        else:
            h = args[0]
        for block in self.blocks:
            h = block(h)
        if self.last:
            emb = emb if self.first else args[1]
            labels = args[-1]
            logits = F.linear(self.norm(h + emb), self.embed.weight)
            return (F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1)),)
        return (h, emb) if self.first else (h,)


@dataclass(frozen=True)
class StageMeta:
    index: int
    inputs: tuple
    outputs: tuple
    param_names: dict
    blocks: range


@dataclass(frozen=True)
class ToySplit:
    graph: StageGraph
    stages: tuple
    batch_inputs: tuple = ("input_ids", "labels")
    loss_name: str = "loss"


def toy_split(stages: int, *, microbatch_size: int, seq_len: int, sizes: tuple[int, ...] | None = None) -> ToySplit:
    """`sizes`: blocks per stage (default: BLOCKS // stages each)."""
    sizes = sizes or (BLOCKS // stages,) * stages
    assert len(sizes) == stages, (sizes, stages)
    starts = [sum(sizes[:s]) for s in range(stages)]
    spec = TensorSpec(name="", shape=(microbatch_size, seq_len, DIM), dtype="float32",
                      bytes=microbatch_size * seq_len * DIM * 4)

    def named(n):
        return TensorSpec(name=n, shape=spec.shape, dtype=spec.dtype, bytes=spec.bytes)

    values = [
        StageValue(name="input_ids", producer=INPUT, consumers=(0,), requires_grad=False),
        StageValue(name="labels", producer=INPUT, consumers=(stages - 1,), requires_grad=False),
        StageValue(name="emb", producer=0, consumers=(stages - 1,), spec=named("emb")),
    ]
    values += [StageValue(name=f"h{s}", producer=s, consumers=(s + 1,), spec=named(f"h{s}"))
               for s in range(stages - 1)]
    metas = []
    for s in range(stages):
        blocks = range(starts[s], starts[s] + sizes[s])
        inputs = ("input_ids",) if s == 0 else (f"h{s - 1}",)
        if s == stages - 1:
            inputs = inputs + ("emb", "labels")
        outputs = ("loss",) if s == stages - 1 else ((f"h{s}", "emb") if s == 0 else (f"h{s}",))
        names = {f"blocks.{j}.{k}": f"blocks.{b}.{k}" for j, b in enumerate(blocks)
                 for k in ("lin.weight", "lin.bias")}
        if s in (0, stages - 1):
            names["embed.weight"] = "embed.weight"
        if s == stages - 1:
            names.update({"norm.weight": "norm.weight", "norm.bias": "norm.bias"})
        metas.append(StageMeta(index=s, inputs=inputs, outputs=outputs, param_names=names, blocks=blocks))
    tied = (TiedWeight(name="embed.weight", stages=(0, stages - 1)),)
    graph = StageGraph(num_stages=stages, values=tuple(values), tied=tied)
    return ToySplit(graph=graph, stages=tuple(metas))


def toy_plan(order, *, seed: int, microbatch_size: int, seq_len: int, sizes: tuple[int, ...] | None = None):
    from ppc.exec.plan import Plan

    from ppc.compiler.lower import lower

    split = toy_split(order.stages, microbatch_size=microbatch_size, seq_len=seq_len, sizes=sizes)
    program = lower(order, split.graph)

    def materialize(stage, device):
        meta = split.stages[stage]
        return ToyStage(ToyLM(seed), stage, meta.blocks, stage == order.stages - 1).to(device)

    return Plan(program=program, split=split, materialize=materialize, model="toy")

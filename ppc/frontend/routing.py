"""Build one GraphModule per stage and a route for every value that crosses stages.

Requires: a traced GraphModule whose nodes carry `node.meta["ppc"]` (specs.annotate) and
an assignment node -> stage that never decreases along the node order.
Guarantees:
- a value produced on stage a and read on stages b..c is an output of stage a and an
  input of each consumer (one StageValue, sent once per consumer, never relayed);
- a value that is parameter-free and does not need a gradient (position ids, masks,
  rotary tables) is instead recomputed: its producing subgraph is copied into each
  consumer stage (StageValue(recompute=True)), so nothing is sent for it;
- parameters live in the stages that read them; one read by several stages (tied
  embedding and lm_head) is a TiedWeight whose gradients are summed before the step;
- batch inputs (input_ids, labels) are StageValue(producer=INPUT), loaded by each rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from ppc.errors import ModelError
from ppc.frontend.specs import NodeInfo, dtype_name, info
from ppc.ir.program import TensorSpec
from ppc.ir.stage_graph import INPUT, StageValue, TiedWeight


@dataclass(slots=True, kw_only=True)
class StagePlan:
    """One stage while it is being built."""

    index: int
    graph: fx.Graph = field(default_factory=fx.Graph)
    env: dict[fx.Node, fx.Node] = field(default_factory=dict)
    inputs: list[fx.Node] = field(default_factory=list)
    """Original nodes the stage receives or loads, in placeholder order."""
    recomputed: list[fx.Node] = field(default_factory=list)
    """Original cross-stage nodes the stage recomputes."""
    targets: dict[str, object] = field(default_factory=dict)
    origin: dict[fx.Node, fx.Node] = field(default_factory=dict)
    """Node of this stage's graph -> original node."""
    outputs: list[fx.Node] = field(default_factory=list)
    """Original nodes the stage returns, in order."""


def spec_of(name: str, meta: NodeInfo) -> TensorSpec:
    return TensorSpec(name=name, shape=meta.shape, dtype=dtype_name(meta.dtype), bytes=meta.nbytes)


class Router:
    """Copies the nodes of each stage into its own graph, resolving cross-stage reads."""

    def __init__(self, gm: fx.GraphModule, stage_of: dict[fx.Node, int]):
        self.gm = gm
        self.stage_of = stage_of
        self.modules = dict(gm.named_modules())
        self.param_ids = {id(p) for p in gm.parameters()}
        self._free: dict[fx.Node, bool] = {}
        self._depth = 0

    def recomputable(self, node: fx.Node) -> bool:
        """Parameter-free, gradient-free and computed from batch inputs and buffers only."""
        if node in self._free:
            return self._free[node]
        if node.op == "placeholder":
            result = True
        elif node.op == "get_attr":
            result = id(_attr(self.gm, node.target)) not in self.param_ids
        elif node.op == "output":
            result = False
        else:
            meta = info(node)
            result = not meta.requires_grad and not _has_params(self.modules, node)
            result = result and all(self.recomputable(a) for a in node.all_input_nodes)
        self._free[node] = result
        return result

    def build(self, num_stages: int) -> list[StagePlan]:
        plans = [StagePlan(index=s) for s in range(num_stages)]
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "get_attr", "output"):
                continue
            plan = plans[self.stage_of[node]]
            plan.env[node] = self._copy(plan, node)
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        self._outputs(plans, output)
        return plans

    def _copy(self, plan: StagePlan, node: fx.Node) -> fx.Node:
        new = plan.graph.node_copy(node, lambda a: self._value(plan, a))
        plan.origin[new] = node
        if node.op == "call_module":
            plan.targets[node.target] = self.modules[node.target]
        return new

    def _value(self, plan: StagePlan, node: fx.Node) -> fx.Node:
        """The node of `plan`'s graph that holds original `node`'s value."""
        if self._depth == 0 and self._recomputed_here(plan, node) and node not in plan.recomputed:
            plan.recomputed.append(node)
        if node in plan.env:
            return plan.env[node]
        if node.op == "get_attr":
            plan.targets[node.target] = _attr(self.gm, node.target)
            new = plan.graph.get_attr(node.target)
            plan.origin[new] = node
        elif node.op != "placeholder" and self.recomputable(node):
            self._depth += 1
            try:
                new = self._copy(plan, node)
            finally:
                self._depth -= 1
        else:
            new = self._placeholder(plan, node)
        plan.env[node] = new
        return new

    def _recomputed_here(self, plan: StagePlan, node: fx.Node) -> bool:
        return (
            node.op not in ("placeholder", "get_attr")
            and self.stage_of.get(node) != plan.index
            and self.recomputable(node)
        )

    def _placeholder(self, plan: StagePlan, node: fx.Node) -> fx.Node:
        meta = info(node)
        if node.op != "placeholder" and meta.kind != "tensor":
            raise ModelError(
                f"node {node.name!r} ({meta.kind}) is produced on stage {self.stage_of[node]} and "
                f"read on stage {plan.index}, but only tensors can be sent and it cannot be "
                "recomputed there (it depends on parameters); move the cut or make it a tensor"
            )
        graph = plan.graph
        last = plan.inputs and plan.env[plan.inputs[-1]]
        first = next(iter(graph.nodes), None)
        if last:
            where = graph.inserting_after(last)
        elif first is not None:
            where = graph.inserting_before(first)
        else:
            where = graph.inserting_after(None)
        with where:
            new = graph.placeholder(node.name)
        new.meta = dict(node.meta)
        plan.inputs.append(node)
        plan.origin[new] = node
        plan.env[node] = new
        return new

    def _outputs(self, plans: list[StagePlan], output: fx.Node) -> None:
        """Each stage returns (as a tuple) the values read by later stages, in node order."""
        wanted: dict[int, list[fx.Node]] = {p.index: [] for p in plans}
        for plan in plans:
            for node in plan.inputs:
                if node.op != "placeholder":
                    wanted[self.stage_of[node]].append(node)
        result = output.args[0]
        if not isinstance(result, fx.Node):
            raise ModelError("the traced model must return a single tensor (the loss)")
        last = plans[-1]
        if self.stage_of.get(result) != last.index:
            raise ModelError(f"the output {result.name!r} is not computed on the last stage")
        wanted[last.index].append(result)
        order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        for plan in plans:
            names = sorted(set(wanted[plan.index]), key=order.__getitem__)
            plan.graph.output(tuple(plan.env[n] for n in names))
            plan.outputs = names


def _has_params(modules: dict, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    return any(True for _ in modules[node.target].parameters())


def _attr(module: torch.nn.Module, target: str):
    for atom in target.split("."):
        module = getattr(module, atom)
    return module


def stage_values(
    plans: list[StagePlan], stage_of: dict[fx.Node, int]
) -> tuple[StageValue, ...]:
    """The routes: batch inputs, sent values and recomputed values, in node order."""
    consumers: dict[fx.Node, set[int]] = {}
    recomputed: dict[fx.Node, set[int]] = {}
    for plan in plans:
        for node in plan.inputs:
            consumers.setdefault(node, set()).add(plan.index)
        for node in plan.recomputed:
            if stage_of.get(node) != plan.index:
                recomputed.setdefault(node, set()).add(plan.index)
    values = []
    for node, stages in consumers.items():
        meta = info(node)
        spec = spec_of(node.name, meta) if meta.kind == "tensor" else None
        if node.op == "placeholder":
            values.append(StageValue(name=node.name, producer=INPUT, consumers=tuple(sorted(stages)),
                                     spec=spec, requires_grad=False))
        else:
            values.append(StageValue(name=node.name, producer=stage_of[node],
                                     consumers=tuple(sorted(stages)), spec=spec,
                                     requires_grad=meta.requires_grad))
    for node, stages in recomputed.items():
        meta = info(node)
        spec = spec_of(node.name, meta) if meta.kind == "tensor" else None
        values.append(StageValue(name=node.name, producer=stage_of[node],
                                 consumers=tuple(sorted(stages)), spec=spec,
                                 requires_grad=False, recompute=True))
    return tuple(values)


def tied_weights(
    modules: list[torch.nn.Module], canonical: dict[int, str]
) -> tuple[TiedWeight, ...]:
    """Parameters (by identity) that several stage modules hold."""
    holders: dict[int, list[int]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for index, module in enumerate(modules):
        for param in module.parameters():
            holders.setdefault(id(param), [])
            if index not in holders[id(param)]:
                holders[id(param)].append(index)
            tensors[id(param)] = param
    tied = []
    for key, stages in holders.items():
        if len(stages) > 1:
            param = tensors[key]
            name = canonical[key]
            meta = NodeInfo(kind="tensor", shape=tuple(param.shape), dtype=param.dtype)
            tied.append(TiedWeight(name=name, stages=tuple(stages), spec=spec_of(name, meta)))
    return tuple(tied)

"""Split a traced model into S pipeline stages, cutting only between blocks.

The unit of a cut is a block (a decoder layer; for a model without repeated blocks, each
module with parameters). Everything before the first block joins stage 0, everything
after a block joins that block's stage (so the embedding is on the first stage and the
final norm, lm_head and loss on the last). Cut positions minimise the largest per-stage
weight, where the weight is estimated forward FLOPs (`by="cost"`), parameters
(`by="params"`) or one per block (`by="layers"`); or `by` gives the blocks of each
stage explicitly (`by=(3, 2, 2, 1)`, summing to the model's number of blocks). An
explicit count may be 0 for the first stage (it then holds only what runs before the
first block: the embedding) and for the last (only what runs after the last block:
final norm, lm_head and loss), e.g. `by=(0, 4, 4, 0)`.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import fx

from ppc.balance import balanced_partition
from ppc.errors import ModelError
from ppc.frontend import routing
from ppc.frontend.specs import info
from ppc.ir.stage_graph import StageGraph

SPLIT_METHODS = ("cost", "layers", "params")


@dataclass(frozen=True, slots=True, kw_only=True)
class StageModule:
    """One pipeline stage: a GraphModule plus the names of what it reads and returns."""

    index: int
    module: fx.GraphModule
    """Parameters on the device they were traced on (meta for build_split)."""
    inputs: tuple[str, ...]
    """Value names, in the module's positional order (batch inputs and received values)."""
    outputs: tuple[str, ...]
    """Names of the returned tuple's items, in order."""
    param_names: dict[str, str]
    """Local parameter name -> name in the full model (a tied one maps to its first name)."""
    layers: tuple[str, ...] = ()
    """Qualified names of the blocks this stage runs."""
    flops: int = 0
    """Estimated forward FLOPs per microbatch (recomputed values included)."""
    params: int = 0
    """Parameters held by the stage (a tied one counts on every stage that holds it)."""
    activation_bytes: int = 0
    """Estimated bytes saved for backward per microbatch (see ppc.frontend.specs)."""
    recomputed: tuple[str, ...] = ()
    """Cross-stage values this stage recomputes instead of receiving."""

    def __call__(self, *args):
        return self.module(*args)


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitModel:
    """The FX split graph and the StageGraph the compiler lowers."""

    graph: StageGraph
    stages: tuple[StageModule, ...]
    batch_inputs: tuple[str, ...]
    loss_name: str
    module: fx.GraphModule
    """The split graph: children submod_0..submod_{S-1}, called in a chain."""
    by: str = "cost"
    """The split method, or the explicit blocks per stage as "3,2,2,1"."""
    blocks: tuple[str, ...] = ()
    """All blocks (cut units) of the model, in order."""
    unit_flops: tuple[float, ...] = ()
    """Estimated FLOPs per block, with what runs before the first block counted in the
    first and what runs after a block in that block."""
    edge_flops: tuple[float, float] = (0.0, 0.0)
    """Estimated FLOPs of what runs before the first block and after the last block
    (already counted in `unit_flops`' first and last entries)."""
    sizes: tuple[int, ...] = ()
    """Blocks per stage (the first and last may be 0)."""
    extras: dict = field(default_factory=dict)
    """Where weights come from (set by build_split: source, init plan, buffers, seed)."""


def split(gm: fx.GraphModule, stages: int, by: str | Sequence[int] = "cost") -> SplitModel:
    """Split a GraphModule from `ppc.frontend.trace` into `stages` stages.

    `by` is a method in SPLIT_METHODS or the blocks of each stage (one count per stage,
    summing to the model's number of blocks; each >= 1 except that the first and the last
    may be 0, see the module docstring)."""
    explicit = not isinstance(by, str)
    if not explicit and by not in SPLIT_METHODS:
        raise ModelError(f"unknown split method {by!r}; known: {', '.join(SPLIT_METHODS)}, or blocks per stage")
    if stages < 1:
        raise ModelError(f"stages must be at least 1, got {stages}")
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "get_attr", "output")]
    if any("ppc" not in n.meta for n in nodes):
        raise ModelError("split needs a GraphModule from ppc.frontend.trace (no shape metadata)")
    units = unit_nodes(gm, _block_stages(by, stages) if explicit else stages)
    segment = _segments(nodes, units)
    if explicit:
        sizes = explicit_sizes(by, stages, len(units))
    elif by == "layers":
        sizes = equal_sizes(len(units), stages)
    else:
        sizes = balanced_sizes(_weights(gm, nodes, segment, len(units), by), stages)
    unit_stage = [s for s, size in enumerate(sizes) for _ in range(size)]
    stage_of = _stage_of(nodes, segment, units, unit_stage, stages)
    flops = _weights(gm, nodes, segment, len(units), "cost")
    label = ",".join(map(str, sizes)) if explicit else by
    result = _assemble(gm, stage_of, units, unit_stage, stages, label)
    _check_edge_stages(result, sizes, label)
    return dataclasses.replace(result, unit_flops=tuple(flops), sizes=tuple(sizes),
                               edge_flops=_edge_flops(nodes, units))


def explicit_sizes(sizes: Sequence[int], stages: int, blocks: int) -> list[int]:
    """Check a user's blocks per stage: `stages` counts summing to `blocks`, each >= 1
    except the first and the last, which may be 0 (a stage without blocks)."""
    sizes = list(sizes)
    given = ",".join(map(str, sizes))
    if any(isinstance(n, bool) or not isinstance(n, int) for n in sizes):
        raise ModelError(f"split {given}: blocks per stage must be integers")
    middle = [s for s in range(1, len(sizes) - 1) if sizes[s] == 0]
    if middle and len(sizes) == stages and min(sizes) >= 0:
        raise ModelError(
            f"split {given}: stage {middle[0]} has 0 blocks; a middle stage needs each at least 1 "
            "block (only the first stage, then the embedding alone, or the last, then the final "
            "norm, lm_head and loss alone, may have 0)"
        )
    if len(sizes) != stages or min(sizes, default=0) < 0 or middle or sum(sizes) != blocks:
        raise ModelError(
            f"split {given}: expected {stages} blocks-per-stage counts, each at least 1 (0 allowed "
            f"for the first and last stage), summing to the model's {blocks} blocks (got "
            f"{len(sizes)} counts summing to {sum(sizes)})"
        )
    return sizes


def _block_stages(sizes: Sequence, stages: int) -> int:
    """How many stages of an explicit split hold blocks (its first and last may not)."""
    sizes = list(sizes)
    ends = (sizes[:1] == [0]) + (len(sizes) > 1 and sizes[-1:] == [0])
    return max(1, stages - ends)


def _stage_of(nodes, segment, units, unit_stage, stages: int) -> dict[fx.Node, int]:
    """Node -> stage: a block's stage for the nodes from it to the next block, stage 0
    for what runs before the first block, the last stage for what runs after the last."""
    first, last = nodes.index(units[0]), nodes.index(units[-1])
    return {
        n: 0 if i < first else stages - 1 if i > last else unit_stage[segment[n]]
        for i, n in enumerate(nodes)
    }


def _edge_flops(nodes, units) -> tuple[float, float]:
    first, last = nodes.index(units[0]), nodes.index(units[-1])
    return (float(sum(info(n).flops for n in nodes[:first])),
            float(sum(info(n).flops for n in nodes[last + 1:])))


def _check_edge_stages(result: SplitModel, sizes: list[int], label: str) -> None:
    """A stage without blocks must still hold weights (embedding, head), else it is empty."""
    for index in {0, len(sizes) - 1}:
        if sizes[index] == 0 and result.stages[index].params == 0:
            where = "before the first" if index == 0 else "after the last"
            raise ModelError(
                f"split {label}: stage {index} has no block and nothing with parameters runs "
                f"{where} block; give it at least 1 block"
            )


def unit_nodes(gm: fx.GraphModule, stages: int) -> list[fx.Node]:
    """Nodes between which a cut may fall: the blocks, or else modules with parameters."""
    blocks = set(gm.meta.get("ppc_blocks", ()))
    units = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in blocks]
    if len(units) < stages:
        modules = dict(gm.named_modules())
        units = [
            n for n in gm.graph.nodes
            if n.op == "call_module" and any(True for _ in modules[n.target].parameters())
        ] if len(units) < 2 else units
    if len(units) < stages:
        raise ModelError(
            f"the model has {len(units)} blocks; it cannot be split into {stages} stages "
            "(cuts fall only between blocks)"
        )
    return units


def _segments(nodes: list[fx.Node], units: list[fx.Node]) -> dict[fx.Node, int]:
    """Node -> index of the block it goes with (the last block at or before it)."""
    unit_index = {n: i for i, n in enumerate(units)}
    current = 0
    segment = {}
    for node in nodes:
        current = unit_index.get(node, current)
        segment[node] = current
    return segment


def _weights(gm, nodes, segment, count: int, by: str) -> list[float]:
    weights = [0.0] * count
    params: dict[int, set] = {i: set() for i in range(count)}
    for node in nodes:
        weights[segment[node]] += info(node).flops
        for arg in node.all_input_nodes:
            if arg.op == "get_attr":
                params[segment[node]].add(arg.target)
    if by == "params":
        modules = dict(gm.named_modules())
        weights = [0.0] * count
        for node in nodes:
            if node.op == "call_module":
                weights[segment[node]] += sum(p.numel() for p in modules[node.target].parameters())
        for index, targets in params.items():
            for target in targets:
                weights[index] += routing._attr(gm, target).numel()
    return weights


def equal_sizes(units: int, stages: int) -> list[int]:
    """Blocks per stage for the equal-layers split (extra blocks go to the first stages)."""
    return [units // stages + (1 if s < units % stages else 0) for s in range(stages)]


def balanced_sizes(weights: list[float], stages: int) -> list[int]:
    """Contiguous groups of `weights` (each non-empty) that minimise the largest sum."""
    return list(balanced_partition(weights, stages))


def _assemble(gm, stage_of, units, unit_stage, stages: int, by: str) -> SplitModel:
    router = routing.Router(gm, stage_of)
    plans = router.build(stages)
    canonical = _canonical(gm)
    modules = []
    for plan in plans:
        module = fx.GraphModule(plan.targets, plan.graph, class_name=f"Stage{plan.index}")
        module.graph.eliminate_dead_code()
        module.recompile()
        modules.append(module)
    stage_modules = tuple(
        _stage_module(plan, module, canonical, units, unit_stage)
        for plan, module in zip(plans, modules)
    )
    values = routing.stage_values(plans, stage_of)
    tied = routing.tied_weights(modules, canonical)
    graph = StageGraph(
        num_stages=stages,
        values=values,
        tied=tied,
        activation_bytes=tuple(s.activation_bytes for s in stage_modules),
        param_bytes=tuple(_grad_bytes(module) for module in modules),
    )
    batch_inputs = tuple(n.name for n in gm.graph.nodes if n.op == "placeholder")
    return SplitModel(
        graph=graph,
        stages=stage_modules,
        batch_inputs=batch_inputs,
        loss_name=plans[-1].outputs[-1].name,
        module=_chain(gm, plans, modules),
        by=by,
        blocks=tuple(str(n.target) for n in units),
    )


def _grad_bytes(module: fx.GraphModule) -> int:
    """Bytes of the stage's trainable parameters' gradients (fp32, as the executor keeps
    them): what a data-parallel gradient reduction of the stage moves."""
    return sum(p.numel() * 4 for p in module.parameters() if p.requires_grad)


def _canonical(gm: fx.GraphModule) -> dict[int, str]:
    first: dict[int, str] = {}
    for name, param in gm.named_parameters(remove_duplicate=False):
        first.setdefault(id(param), name)
    return first


def _stage_module(plan, module, canonical, units, unit_stage) -> StageModule:
    # what the stage computes: its own non-input nodes (a received value is a placeholder
    # here, though its original node computed it on the producing stage)
    computed = [
        plan.origin[n] for n in module.graph.nodes
        if n in plan.origin and n.op not in ("placeholder", "get_attr")
    ]
    return StageModule(
        index=plan.index,
        module=module,
        inputs=tuple(n.name for n in plan.inputs),
        outputs=tuple(n.name for n in plan.outputs),
        param_names={
            name: canonical[id(p)] for name, p in module.named_parameters(remove_duplicate=False)
        },
        layers=tuple(str(u.target) for u, s in zip(units, unit_stage) if s == plan.index),
        flops=sum(info(n).flops for n in computed),
        params=sum(p.numel() for p in module.parameters()),
        activation_bytes=sum(info(n).saved_bytes for n in computed),
        recomputed=tuple(n.name for n in plan.recomputed),
    )


def _chain(gm: fx.GraphModule, plans, modules) -> fx.GraphModule:
    """The split graph: placeholders, submod_i calls in order, getitem per output."""
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node.name] = graph.placeholder(node.name)
    targets = {}
    result = None
    for plan, module in zip(plans, modules):
        name = f"submod_{plan.index}"
        targets[name] = module
        call = graph.call_module(name, tuple(env[n.name] for n in plan.inputs))
        for i, out in enumerate(plan.outputs):
            env[out.name] = graph.call_function(operator.getitem, (call, i))
            result = env[out.name]
    graph.output(result)
    return fx.GraphModule(targets, graph, class_name=f"{gm.__class__.__name__}Split")


def balance(per_stage: list[float]) -> float:
    """max / mean of a per-stage quantity (1.0 is perfect balance)."""
    mean = sum(per_stage) / len(per_stage)
    return max(per_stage) / mean if mean else 1.0


def stage_costs(split_model: SplitModel, sizes: list[int] | None = None) -> list[float]:
    """Estimated FLOPs per stage when stage s runs sizes[s] consecutive blocks (default:
    the split's own sizes). Stage 0 also runs everything before the first block, the
    last stage everything after the last block (alone when its count is 0); recomputed
    values are not counted."""
    sizes = list(sizes or split_model.sizes)
    totals, at = [], 0
    for size in sizes:
        totals.append(sum(split_model.unit_flops[at:at + size]))
        at += size
    before, after = split_model.edge_flops
    if len(sizes) > 1 and sizes[0] == 0:
        totals[0] += before
        totals[1] -= before
    if len(sizes) > 1 and sizes[-1] == 0:
        totals[-1] += after
        totals[-2] -= after
    return totals


def equal_layers(split_model: SplitModel) -> list[float]:
    """Estimated FLOPs per stage of the equal-layers split of the same model."""
    return stage_costs(split_model, equal_sizes(len(split_model.blocks), len(split_model.stages)))

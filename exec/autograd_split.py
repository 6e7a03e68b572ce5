"""Backward of one stage, whole (B) or split into inputs-only (I) and weights-only (W).

B computes gradients for the stage inputs and parameters in one engine pass.

I runs the engine from the stage outputs to the stage inputs only. Before it does, it
cuts the stage's autograd graph in two: the nodes from which a stage input can be
reached (the input side) and the rest (the weight side, which leads only to
parameters). An input-side node with a weight-side child (a matmul whose other operand
is a weight) is a frontier node: a pre-hook records the gradient flowing into it. The
engine runs only the input-side outputs of every node, so I leaves the weight halves
of the frontier nodes undone.

W restarts the engine at the frontier nodes with the recorded gradients and asks for the
parameters only, so each frontier node now computes just its weight-side outputs and
nothing below it on the input side runs again: I + W costs about one B. Outputs that
reach no stage input (the first stage, whose inputs are token ids) are weight-side
roots and W starts at them with their own gradients. Both halves run the same kernels
on the same saved tensors as B, so I + W produces B's gradients.

W runs one engine pass per group of frontier nodes that share a parameter. A parameter
read twice in one stage (tied weights) puts both readers in one group; the input side
between them then runs again in W, and a pre-hook pins each frontier node's gradient to
the one recorded in I so that nothing is counted twice.

The roots are called through the autograd engine directly because a stage output
whose storage was freed after it was sent keeps its graph but not its shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.autograd.graph import GradientEdge, Node, _engine_run_backward, get_gradient_edge

__all__ = ["WeightWork", "backward_full", "backward_input", "backward_weight", "free_storage"]


@dataclass(slots=True, kw_only=True)
class _Unit:
    """Where W starts: a frontier node (with what I recorded) or a weight-side root."""

    edges: list[GradientEdge]
    grads: list[torch.Tensor]
    node: Node | None = None
    """The frontier node; None for a weight-side root."""
    saved: tuple = ()
    """The frontier node's incoming gradients as I recorded them (None where undefined)."""
    reached: set[Node] = field(default_factory=set)
    """Parameter nodes reached from here through weight-side nodes only."""

    @classmethod
    def frontier(cls, node: Node, saved: tuple) -> _Unit:
        edges = [GradientEdge(node, i) for i, g in enumerate(saved) if g is not None]
        return cls(edges=edges, grads=[g for g in saved if g is not None], node=node, saved=saved)


@dataclass(slots=True)
class _Group:
    """One W engine pass: start edges with their gradients, the parameters they reach."""

    edges: list[GradientEdge] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    params: list[torch.Tensor] = field(default_factory=list)
    reached: set[Node] = field(default_factory=set)
    pinned: list[tuple[Node, tuple]] = field(default_factory=list)
    """Frontier nodes and their I gradients, when the input side between them reruns."""


@dataclass(slots=True)
class WeightWork:
    """What I leaves for W: the engine passes that finish the parameter gradients."""

    groups: list[_Group] = field(default_factory=list)


def _run(
    roots: Sequence,
    grads: Sequence[torch.Tensor],
    wrt: Sequence,
    *,
    retain: bool,
    accumulate: bool,
) -> tuple[torch.Tensor | None, ...]:
    """One engine pass from `roots` (tensors or gradient edges) to `wrt`: returns their
    gradients, or with `accumulate` adds them into `.grad` inside the engine (as a plain
    backward does)."""
    if not roots or not wrt:
        return tuple(None for _ in wrt)
    return _engine_run_backward(
        tuple(roots), tuple(grads), retain, False, tuple(wrt), True, accumulate
    )


def _take_grads(leaves: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    grads = tuple(leaf.grad for leaf in leaves)
    for leaf in leaves:
        leaf.grad = None
    return grads


def backward_full(roots, grads, inputs, params) -> tuple[torch.Tensor | None, ...]:
    """B: input gradients returned, parameter gradients accumulated into `.grad`.

    A stage's graph has no leaves but its inputs and parameters, so the engine runs
    unfiltered (no `inputs=`), as a plain `loss.backward()` does: cheaper per call."""
    if roots and (inputs or params):
        _engine_run_backward(tuple(roots), tuple(grads), False, False, (), True, True)
    return _take_grads(inputs)


def backward_input(
    roots, grads, inputs, params
) -> tuple[tuple[torch.Tensor | None, ...], WeightWork]:
    """I: input gradients only; returns them with the work W has left to do."""
    root_edges = [get_gradient_edge(root) for root in roots]
    children = _children({edge.node for edge in root_edges})
    input_side = _reaching(children, {get_gradient_edge(x).node for x in inputs})
    param_of = {get_gradient_edge(p).node: p for p in params}
    frontier = [
        node for node in input_side
        if any(child not in input_side for child in children[node])
    ]
    recorded: dict[Node, tuple] = {}
    handles = [node.register_prehook(_recorder(recorded, node)) for node in frontier]
    try:
        input_grads = _run(roots, grads, inputs, retain=True, accumulate=False)
    finally:
        for handle in handles:
            handle.remove()
    units = [_Unit.frontier(node, recorded.get(node, ())) for node in frontier]
    units += [
        _Unit(edges=[edge], grads=[grad])
        for edge, grad in zip(root_edges, grads)
        if edge.node not in input_side
    ]
    for unit in units:
        starts = children[unit.node] if unit.node is not None else [e.node for e in unit.edges]
        unit.reached = _params_below(children, starts, input_side, param_of)
    return input_grads, WeightWork(groups=_group(units, param_of))


def backward_weight(work: WeightWork) -> None:
    """W: parameter gradients accumulated into `.grad` from what I recorded."""
    for group in work.groups:
        if not group.edges:
            continue
        handles = [node.register_prehook(_pin(saved)) for node, saved in group.pinned]
        try:
            _run(group.edges, group.grads, group.params, retain=True, accumulate=True)
        finally:
            for handle in handles:
                handle.remove()
    work.groups.clear()


def free_storage(tensor: torch.Tensor) -> None:
    """Drop a sent output's data while its autograd graph stays usable as a root."""
    if tensor.grad_fn is not None and tensor._base is None:
        tensor.data = torch.empty(0, device=tensor.device, dtype=tensor.dtype)


# ----- graph analysis ---------------------------------------------------------------------


def _children(roots: set[Node]) -> dict[Node, list[Node]]:
    """Every node below `roots` with its children (the next functions that exist)."""
    children: dict[Node, list[Node]] = {}
    stack = [node for node in roots if node is not None]
    while stack:
        node = stack.pop()
        if node in children:
            continue
        kids = [fn for fn, _ in node.next_functions if fn is not None]
        children[node] = kids
        stack.extend(kid for kid in kids if kid not in children)
    return children


def _reaching(children: dict[Node, list[Node]], targets: set[Node]) -> set[Node]:
    """The nodes from which one of `targets` can be reached (targets included)."""
    parents: dict[Node, list[Node]] = {}
    for node, kids in children.items():
        for kid in kids:
            parents.setdefault(kid, []).append(node)
    found = {node for node in targets if node in children}
    stack = list(found)
    while stack:
        for parent in parents.get(stack.pop(), ()):
            if parent not in found:
                found.add(parent)
                stack.append(parent)
    return found


def _params_below(children, starts, input_side: set[Node], param_of: dict) -> set[Node]:
    """Parameter nodes reached from `starts` through weight-side nodes only."""
    seen: set[Node] = set()
    stack = [node for node in starts if node not in input_side]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(kid for kid in children.get(node, ()) if kid not in seen)
    return {node for node in seen if node in param_of}


def _group(units: list[_Unit], param_of: dict) -> list[_Group]:
    """Merge the units that reach a common parameter into one engine pass each."""
    owner = list(range(len(units)))

    def find(i: int) -> int:
        while owner[i] != i:
            owner[i] = owner[owner[i]]
            i = owner[i]
        return i

    first: dict[Node, int] = {}
    for i, unit in enumerate(units):
        for param in unit.reached:
            owner[find(i)] = find(first.setdefault(param, i))
    merged: dict[int, _Group] = {}
    for i, unit in enumerate(units):
        if not unit.reached:
            continue
        group = merged.setdefault(find(i), _Group())
        group.edges.extend(unit.edges)
        group.grads.extend(unit.grads)
        group.params.extend(param_of[p] for p in unit.reached if p not in group.reached)
        group.reached.update(unit.reached)
        if unit.node is not None:
            group.pinned.append((unit.node, unit.saved))
    for group in merged.values():
        if len(group.pinned) < 2:  # one frontier node: no input-side path leads back to it
            group.pinned.clear()
    return list(merged.values())


def _recorder(recorded: dict, node: Node):
    def hook(grad_outputs):
        recorded[node] = tuple(grad_outputs)

    return hook


def _pin(saved: tuple):
    def hook(grad_outputs):
        return saved

    return hook

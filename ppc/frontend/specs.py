"""Shapes, dtypes, FLOPs and saved-activation bytes of every node, from a fake-tensor run.

`annotate` runs the traced graph once under FakeTensorMode (no real compute, no real
memory: a 1B-parameter model on the meta device takes about a second) and stores a
`NodeInfo` in `node.meta["ppc"]`. `detach_metadata` then cuts edges that only carry
shape, dtype or device (`x.shape[1]`, `x.device`, the `inputs_embeds` of a mask builder),
so that position ids, masks and rotary tables depend on batch inputs alone and a
consumer stage can recompute them.

Estimates (documented in docs/models.md):
- flops: forward FLOPs counted by torch.utils.flop_counter (matmuls, convolutions,
  attention) plus one FLOP per produced element for everything else.
- saved_bytes: bytes of the tensors autograd saves for backward while running the node,
  parameters (and views of them) excluded, each tensor counted once.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from ppc.errors import ModelError


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """What the fake run learned about one node's output."""

    kind: str
    """"tensor", "none" (the node returns None) or "other" (tuples, Python values)."""
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    requires_grad: bool = False
    flops: int = 0
    """Estimated forward FLOPs of the node (per the example batch)."""
    saved_bytes: int = 0
    """Bytes autograd keeps alive for backward from this node."""
    params: int = 0
    """Parameters the node reads (call_module: the module's; get_attr: the tensor's)."""

    @property
    def nbytes(self) -> int:
        if self.kind != "tensor":
            return 0
        return _numel(self.shape) * _itemsize(self.dtype)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _itemsize(dtype: torch.dtype | None) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size() if dtype else 0


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32 (the TensorSpec spelling; torch.<name> parses back)."""
    return str(dtype).removeprefix("torch.")


def meta_stand_in(anchor: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-storage tensor with the given shape and dtype on `anchor`'s device, for
    arguments that are read only for their metadata."""
    return torch.empty((), dtype=dtype, device=anchor.device).expand(shape)


class _Annotator(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.modules = dict(gm.named_modules())
        self.infos: dict[fx.Node, NodeInfo] = {}

    def run_node(self, n: fx.Node):
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor):
            base = t._base if t._base is not None else t
            if not (base.is_leaf and base.requires_grad):
                saved[id(base)] = base.numel() * base.element_size()
            return t

        counter = FlopCounterMode(display=False)
        try:
            with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                result = super().run_node(n)
        except ModelError:
            raise
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ModelError(
                f"node {n.name!r} ({n.op} {_target_name(n)}) fails on fake tensors: "
                f"{type(error).__name__}: {reason}"
            ) from error
        self.infos[n] = _info(result, counter.get_total_flops(), sum(saved.values()),
                              self._params(n))
        return result

    def _params(self, n: fx.Node) -> int:
        if n.op == "call_module":
            return sum(p.numel() for p in self.modules[n.target].parameters())
        if n.op == "get_attr":
            value = _get_attr(self.module, n.target)
            if isinstance(value, torch.nn.Parameter):
                return value.numel()
        return 0


def _get_attr(module: torch.nn.Module, target: str):
    for atom in target.split("."):
        module = getattr(module, atom)
    return module


def _target_name(n: fx.Node) -> str:
    t = n.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def _info(result, flops: int, saved: int, params: int) -> NodeInfo:
    if isinstance(result, torch.Tensor):
        return NodeInfo(
            kind="tensor",
            shape=tuple(int(d) for d in result.shape),
            dtype=result.dtype,
            requires_grad=result.requires_grad,
            flops=int(flops) + result.numel(),
            saved_bytes=saved,
            params=params,
        )
    kind = "none" if result is None else "other"
    return NodeInfo(kind=kind, flops=int(flops), saved_bytes=saved, params=params)


def _device_of(gm: fx.GraphModule) -> torch.device:
    for tensor in (*gm.parameters(), *gm.buffers()):
        return tensor.device
    return torch.device("cpu")


def annotate(gm: fx.GraphModule, example_inputs: dict) -> None:
    """Run `gm` on fake copies of `example_inputs` (moved to the parameters' device) and
    store a NodeInfo in every node's meta["ppc"]."""
    device = _device_of(gm)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    placeholders = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    with mode:
        args = []
        for name in placeholders:
            value = example_inputs[name]
            if isinstance(value, torch.Tensor):
                value = mode.from_tensor(value.to(device) if value.device != device else value)
            args.append(value)
        annotator = _Annotator(gm)
        annotator.run(*args)
    for node, info in annotator.infos.items():
        node.meta["ppc"] = info


def info(node: fx.Node) -> NodeInfo:
    return node.meta.get("ppc") or NodeInfo(kind="other")


_SHAPE_METHODS = {"size", "dim"}
_SHAPE_ATTRS = {"shape", "dtype", "ndim"}


def detach_metadata(gm: fx.GraphModule, meta_only: dict[fx.Node, tuple]) -> None:
    """Cut edges that carry only shape, dtype or device of an activation.

    `x.shape`, `x.size(...)`, `x.dim()`, `x.dtype` become constants (the pipeline runs at
    fixed shapes); `x.device` reads the device of the first batch input; arguments in
    `meta_only` become zero-storage stand-ins. Re-annotates the new nodes.
    """
    graph = gm.graph
    anchor = next(
        (n for n in graph.nodes if n.op == "placeholder" and info(n).kind == "tensor"), None
    )
    if anchor is None:
        return
    for node, keys in meta_only.items():
        _stand_in_args(graph, node, keys, anchor)
    for node in list(graph.nodes):
        _fold_metadata(graph, node, anchor)
    _fold_constants(graph)
    graph.eliminate_dead_code()
    gm.recompile()


def _stand_in_args(graph: fx.Graph, node: fx.Node, keys: tuple, anchor: fx.Node) -> None:
    for key in keys:
        source = node.kwargs.get(key) if isinstance(key, str) else _arg(node, key)
        if not isinstance(source, fx.Node) or source.op == "placeholder":
            continue
        meta = info(source)
        if meta.kind != "tensor":
            continue
        with graph.inserting_before(node):
            stand_in = graph.call_function(meta_stand_in, (anchor, meta.shape, meta.dtype))
        stand_in.meta["ppc"] = NodeInfo(kind="tensor", shape=meta.shape, dtype=meta.dtype)
        if isinstance(key, str):
            node.update_kwarg(key, stand_in)
        else:
            node.update_arg(key, stand_in)


def _arg(node: fx.Node, position: int):
    return node.args[position] if position < len(node.args) else None


def _fold_metadata(graph: fx.Graph, node: fx.Node, anchor: fx.Node) -> None:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return
    source = node.args[0]
    if source.op == "placeholder" or info(source).kind != "tensor":
        return
    meta = info(source)
    if node.op == "call_function" and node.target is getattr and node.args[1] == "device":
        with graph.inserting_before(node):
            device = graph.call_function(getattr, (anchor, "device"))
        device.meta["ppc"] = NodeInfo(kind="other")
        node.replace_all_uses_with(device)
        return
    if node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRS:
        value = {"shape": meta.shape, "dtype": meta.dtype, "ndim": len(meta.shape)}[node.args[1]]
    elif node.op == "call_method" and node.target in _SHAPE_METHODS and not node.kwargs:
        if node.target == "dim":
            value = len(meta.shape)
        else:
            value = meta.shape[node.args[1]] if len(node.args) > 1 else meta.shape
    else:
        return
    _replace_with_constant(node, value)


def _replace_with_constant(node: fx.Node, value) -> None:
    for user in list(node.users):
        user.args = fx.node.map_aggregate(user.args, lambda a: value if a is node else a)
        user.kwargs = fx.node.map_aggregate(user.kwargs, lambda a: value if a is node else a)


_FOLDABLE = {
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
    operator.truediv, operator.neg, operator.mod, len,
}


def _has_node(value) -> bool:
    found = []
    fx.node.map_aggregate(value, lambda a: found.append(a) if isinstance(a, fx.Node) else a)
    return bool(found)


def _fold_constants(graph: fx.Graph) -> None:
    """Evaluate Python arithmetic on constants left behind by `_fold_metadata`."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _FOLDABLE:
            continue
        if _has_node(node.args) or _has_node(node.kwargs):
            continue
        value = node.target(*node.args, **node.kwargs)
        if isinstance(value, torch.Tensor):
            continue
        _replace_with_constant(node, value)

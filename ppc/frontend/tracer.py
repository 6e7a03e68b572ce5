"""Trace a model into an FX graph whose repeated blocks stay single leaf nodes.

`trace` keeps every repeated block (the decoder layers of a transformer, the children of
an nn.ModuleList or nn.Sequential that share one class) and a few designated modules
(rotary embeddings) as call_module leaves, records helper functions with Python control
flow (transformers' mask builders) as single leaf calls, fixes every forward argument
that is not an example input to its default, and returns the loss (when labels are
given) as the graph's output. After tracing it runs the graph on fake tensors to infer
every node's shape, dtype and estimated FLOPs (`ppc.frontend.specs`).
"""

from __future__ import annotations

import inspect
import keyword
import logging
import os
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import fx, nn

from ppc.errors import ModelError
from ppc.frontend import specs

log = logging.getLogger(__name__)

LEAF_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "create_causal_mask": ("inputs_embeds",),
    "create_sliding_window_causal_mask": ("inputs_embeds",),
    "create_bidirectional_mask": ("inputs_embeds",),
    "create_chunked_causal_mask": ("inputs_embeds",),
    "create_bidirectional_sliding_window_mask": ("inputs_embeds",),
}
"""Helper functions recorded as one leaf call -> arguments they read only for shape, dtype
and device (replaced after tracing by a zero-storage stand-in, so the call does not depend
on activations and a consumer stage can recompute it)."""

LEAF_MODULE_SUFFIXES: dict[str, tuple[int, ...]] = {"RotaryEmbedding": (0,)}
"""Class-name suffixes of designated leaf modules -> positional arguments read only for
their metadata (the rotary embedding reads `x` for its dtype and device)."""


class LeafCall:
    """A helper function that FX records as one call node; non-tensor arguments (the
    model config) are bound here because an FX node cannot hold them."""

    def __init__(self, fn: Callable, *, bound: dict, meta_only: tuple[str, ...]):
        self.fn = fn
        self.bound = bound
        self.meta_only = meta_only
        self.__name__ = f"leaf_{fn.__name__}"
        self.__qualname__ = self.__name__
        self.__module__ = __name__

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **self.bound, **kwargs)

    def __repr__(self) -> str:
        return f"LeafCall({self.fn.__name__})"


def repeated_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the repeated blocks: children of a ModuleList/Sequential whose
    class occurs at least twice there (the decoder layers of a transformer)."""
    names: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        counts = Counter(type(child) for child in module if _has_parameters(child))
        if not counts:
            continue
        cls, count = counts.most_common(1)[0]
        if count < 2:
            continue
        prefix = f"{name}." if name else ""
        names += [f"{prefix}{key}" for key, child in module.named_children() if type(child) is cls]
    return names


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[int]):
        super().__init__()
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self._leaves or super().is_leaf_module(m, module_qualified_name)


def _root_for(model: nn.Module, names: tuple[str, ...], fixed: dict) -> nn.Module:
    """A module that shares the model's children (same qualified names) and whose forward
    takes exactly `names` and returns the loss (or the model's plain output)."""
    params = ", ".join(names)
    call = ", ".join(f"{n}={n}" for n in names)
    source = f"def forward(self, {params}):\n    return self._ppc_call({call})\n"
    scope: dict = {}
    exec(compile(source, "<ppc-root>", "exec"), scope)  # noqa: S102 - names are identifiers
    root_cls = type(f"{type(model).__name__}Root", (nn.Module,), {"forward": scope["forward"]})
    root = root_cls()
    for name, child in model.named_children():
        root.add_module(name, child)
    for name, param in model.named_parameters(recurse=False):
        root.register_parameter(name, param)
    for name, buf in model.named_buffers(recurse=False):
        root.register_buffer(name, buf)

    def call(**inputs):
        out = model.forward(**inputs, **fixed)
        if isinstance(out, Mapping):
            if "labels" in inputs:
                return out["loss"]
            return out["logits"] if "logits" in out else next(iter(out.values()))
        return out

    object.__setattr__(root, "_ppc_call", call)
    return root


def _fixed_arguments(model: nn.Module, names: Iterable[str]) -> dict:
    """Forward arguments that are not example inputs but must be fixed for training."""
    params = inspect.signature(inspect.unwrap(model.forward)).parameters
    fixed = {}
    if "use_cache" in params:
        fixed["use_cache"] = False
    if "return_dict" in params and "return_dict" not in names:
        fixed["return_dict"] = True
    return fixed


def _check_inputs(model: nn.Module, example_inputs: dict) -> None:
    if not example_inputs:
        raise ModelError("trace needs at least one example input (e.g. {'input_ids': ...})")
    params = inspect.signature(inspect.unwrap(model.forward)).parameters
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in example_inputs:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ModelError(f"example input name {name!r} is not a Python identifier")
        if name not in params and not accepts_kwargs:
            known = ", ".join(p for p in params if p != "self")
            raise ModelError(
                f"{type(model).__name__}.forward has no argument {name!r} (it takes: {known})"
            )


def _module_namespaces(model: nn.Module) -> list[dict]:
    mods = {sys.modules[type(m).__module__] for m in model.modules()}
    return [vars(mod) for mod in mods if mod is not None]


def _leaf_patches(model: nn.Module, tracer: _Tracer) -> list[tuple[dict, str, Callable]]:
    """Replace mask builders in the model's modules by stubs that record one leaf call."""
    config = getattr(model, "config", None)
    patches = []
    for namespace in _module_namespaces(model):
        for name, meta_only in LEAF_FUNCTIONS.items():
            fn = namespace.get(name)
            if fn is None or not callable(fn):
                continue
            patches.append((namespace, name, fn))
            namespace[name] = _leaf_stub(fn, tracer, config, meta_only)
    return patches


def _leaf_stub(fn: Callable, tracer: _Tracer, config, meta_only: tuple[str, ...]) -> Callable:
    signature = inspect.signature(inspect.unwrap(fn))

    def stub(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        tensor_args: dict = {}
        fixed: dict = {}
        for key, value in bound.arguments.items():
            if value is None or isinstance(value, (fx.Proxy, torch.Tensor, int, float, bool, str)):
                tensor_args[key] = value
            else:
                fixed[key] = value
        if config is not None and fixed.get("config") is not None and fixed["config"] is not config:
            log.debug("leaf %s called with a config other than the model's", fn.__name__)
        leaf = LeafCall(fn, bound=fixed, meta_only=meta_only)
        return tracer.create_proxy("call_function", leaf, (), tensor_args)

    return stub


def trace(
    model: nn.Module,
    example_inputs: dict,
    *,
    leaf_modules: Iterable[str] = (),
) -> fx.GraphModule:
    """Trace `model` called with `example_inputs` (keyword arguments) into a GraphModule.

    Repeated blocks, modules named in `leaf_modules` and rotary embeddings stay leaves.
    With `labels` among the inputs of a transformers model, the graph returns the loss.
    The result's nodes carry `node.meta["ppc"]` (shape, dtype, FLOPs) from a fake-tensor
    run; raises ModelError naming the node and the reason when tracing fails.
    """
    _check_inputs(model, example_inputs)
    names = tuple(example_inputs)
    blocks = repeated_blocks(model)
    modules = dict(model.named_modules())
    extra = [n for n in leaf_modules if n not in modules]
    if extra:
        raise ModelError(f"leaf module {extra[0]!r} is not a submodule of {type(model).__name__}")
    designated = [
        n for n, m in modules.items()
        if any(type(m).__name__.endswith(s) for s in LEAF_MODULE_SUFFIXES)
    ]
    leaves = {id(modules[n]) for n in (*blocks, *leaf_modules, *designated)}
    tracer = _Tracer(leaves)
    root = _root_for(model, names, _fixed_arguments(model, names))
    patches = _leaf_patches(model, tracer)
    try:
        graph = tracer.trace(root)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(_trace_failure(error, tracer)) from error
    finally:
        for namespace, name, fn in patches:
            namespace[name] = fn
    gm = fx.GraphModule(root, graph, class_name=type(model).__name__)
    gm.meta["ppc_blocks"] = tuple(blocks)
    gm.meta["ppc_model_class"] = type(model).__name__
    specs.annotate(gm, example_inputs)
    specs.detach_metadata(gm, _meta_only_args(gm, modules))
    return gm


def _meta_only_args(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> dict[fx.Node, tuple]:
    """Per leaf node, the arguments (kwarg names or positions) read only for metadata."""
    found: dict[fx.Node, tuple] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, LeafCall):
            found[node] = node.target.meta_only
        elif node.op == "call_module" and node.target in modules:
            cls = type(modules[node.target]).__name__
            for suffix, positions in LEAF_MODULE_SUFFIXES.items():
                if cls.endswith(suffix):
                    found[node] = positions
    return found


def _trace_failure(error: Exception, tracer: _Tracer) -> str:
    last = None
    graph = getattr(tracer, "graph", None)
    if graph is not None:
        nodes = list(graph.nodes)
        last = nodes[-1] if nodes else None
    where = f" after node {last.name!r} ({last.op} {_target(last)})" if last is not None else ""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    hint = ""
    if "iterate" in reason or "control flow" in reason or "bool" in reason:
        hint = "; data-dependent Python control flow: mark the module as a leaf (leaf_modules=)"
    return f"cannot trace{where}{_user_frame(error)}: {type(error).__name__}: {reason}{hint}"


def _user_frame(error: Exception) -> str:
    """" at file:line" of the innermost traceback frame outside torch and ppc."""
    frames = traceback.extract_tb(error.__traceback__)
    skip = (f"{os.sep}torch{os.sep}", f"{os.sep}ppc{os.sep}frontend{os.sep}", "<ppc-root>")
    user = [f for f in frames if not any(part in f.filename for part in skip)]
    return f" at {user[-1].filename}:{user[-1].lineno}" if user else ""


def _target(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))

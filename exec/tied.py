"""Tied weights: one parameter used by several stages (e.g. embedding and LM head).

Stages of one rank share one Parameter object, so autograd sums their gradients and the
optimizer updates the weight once. Ranks hold one copy each; after the backward their
gradients are summed across the owning ranks, so every copy takes the same optimizer
step. For the global gradient norm only the copy on the lowest stage counts.
Owner groups are made of pipeline ranks of this replica (`PipelineMesh.subgroup`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["TiedReducer"]


@dataclass(slots=True, kw_only=True)
class _Tied:
    name: str
    param: torch.nn.Parameter
    """This rank's copy, shared by its local stages that use the weight."""
    group: object | None
    """Process group of the owning ranks, or None when this rank owns them all."""


class TiedReducer:
    """Sums tied-weight gradients; every process of the world must construct it, in the
    same order (it creates groups). `rank` is the pipeline rank."""

    def __init__(self, *, graph, stages, placement, rank: int, modules: dict[int, torch.nn.Module], mesh):
        self._tied: list[_Tied] = []
        self._secondary: set[int] = set()
        self._done: set[str] = set()
        for tied in graph.tied:
            owners = sorted({placement[s] for s in tied.stages})
            group = mesh.subgroup(owners) if len(owners) > 1 else None
            if rank not in owners:
                continue
            local = [s for s in tied.stages if placement[s] == rank]
            shared = _find(modules[local[0]], stages[local[0]].param_names, tied.name)
            for s in local[1:]:
                _replace(modules[s], stages[s].param_names, tied.name, shared)
            if local[0] != min(tied.stages):
                self._secondary.add(id(shared))
            self._tied.append(_Tied(name=tied.name, param=shared, group=group))

    def params(self, names: set[str] | None = None) -> list[torch.nn.Parameter]:
        """This rank's copies of the tied weights in `names` (all when None)."""
        return [t.param for t in self._tied if not names or t.name in names]

    def counts_in_norm(self, param: torch.nn.Parameter) -> bool:
        return id(param) not in self._secondary

    def reduce(self, names: set[str] | None = None) -> None:
        """Sum the gradients of the tied weights in `names` (all when None), once per step."""
        for tied in self._tied:
            if tied.name in self._done or (names and tied.name not in names):
                continue
            self._done.add(tied.name)
            if tied.group is None:
                continue  # every stage using it is on this rank: autograd already summed
            param = tied.param
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, group=tied.group)

    def finish_step(self) -> None:
        """Reduce whatever no REDUCE_TIED instruction covered; re-arm for the next step."""
        self.reduce()
        self._done.clear()


def _local_name(param_names: dict[str, str], full_name: str) -> str:
    return {v: k for k, v in param_names.items()}.get(full_name, full_name)


def _find(module: torch.nn.Module, param_names: dict[str, str], full_name: str):
    try:
        return module.get_parameter(_local_name(param_names, full_name))
    except AttributeError as error:
        raise RuntimeError(f"tied weight {full_name!r} not found in its stage module") from error


def _replace(module, param_names: dict[str, str], full_name: str, shared: torch.nn.Parameter) -> None:
    """Make a stage use `shared` in place of its own copy of a tied weight."""
    _find(module, param_names, full_name)
    owner_name, _, attr = _local_name(param_names, full_name).rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    setattr(owner, attr, shared)

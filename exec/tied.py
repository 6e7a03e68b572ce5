"""Tied weights: one parameter used by several stages (e.g. embedding and LM head).

Each stage holds its own copy; after the backward their gradients are summed (locally,
then across the owning ranks), so every copy takes the same optimizer step. For the
global gradient norm only the copy on the lowest stage counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["TiedReducer"]


@dataclass(slots=True, kw_only=True)
class _Tied:
    name: str
    copies: list[torch.nn.Parameter]
    """This rank's copies, one per local owning stage."""
    group: object | None
    """Process group of the owning ranks, or None when this rank owns them all."""


class TiedReducer:
    """Sums tied-weight gradients; every rank must construct it (it creates groups)."""

    def __init__(self, *, graph, stages, placement, rank: int, modules: dict[int, torch.nn.Module]):
        self._tied: list[_Tied] = []
        self._secondary: set[int] = set()
        self._done: set[str] = set()
        for tied in graph.tied:
            owners = sorted({placement[s] for s in tied.stages})
            group = dist.new_group(ranks=owners) if len(owners) > 1 else None
            if rank not in owners:
                continue
            copies = []
            for s in tied.stages:
                if placement[s] != rank:
                    continue
                param = _find(modules[s], stages[s].param_names, tied.name)
                copies.append(param)
                if s != min(tied.stages):
                    self._secondary.add(id(param))
            self._tied.append(_Tied(name=tied.name, copies=copies, group=group))

    def counts_in_norm(self, param: torch.nn.Parameter) -> bool:
        return id(param) not in self._secondary

    def reduce(self, names: set[str] | None = None) -> None:
        """Sum the gradients of the tied weights in `names` (all when None), once per step."""
        for tied in self._tied:
            if tied.name in self._done or (names and tied.name not in names):
                continue
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in tied.copies]
            total = torch.stack(grads).sum(0) if len(grads) > 1 else grads[0].clone()
            if tied.group is not None:
                dist.all_reduce(total, group=tied.group)
            for p in tied.copies:
                p.grad = total.clone()
            self._done.add(tied.name)

    def finish_step(self) -> None:
        """Reduce whatever no REDUCE_TIED instruction covered; re-arm for the next step."""
        self.reduce()
        self._done.clear()


def _find(module: torch.nn.Module, param_names: dict[str, str], full_name: str):
    local = {v: k for k, v in param_names.items()}.get(full_name, full_name)
    try:
        return module.get_parameter(local)
    except AttributeError as error:
        raise RuntimeError(f"tied weight {full_name!r} not found in its stage module") from error

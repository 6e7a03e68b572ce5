"""The optimizer step every pipeline rank takes at its STEP instruction: finish the
data-parallel and tied-weight reductions, clip all gradients by the global norm over the
pipeline, step.

The norm is summed over the pipeline group, not the whole mesh: replicas hold equal
gradients once reduced (exec/mesh.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from ppc.exec.optim import clip_by_norm, squared_norm
from ppc.exec.tied import TiedReducer

__all__ = ["all_sum", "optimizer_step"]


def all_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(tensor, group=group)
    return tensor


def optimizer_step(
    *, params: list[torch.nn.Parameter], tied: TiedReducer, optimizer: torch.optim.Optimizer,
    clip: float | None, group, device: torch.device, reductions=None,
    check: Callable[[float, list[torch.nn.Parameter]], None] | None = None,
) -> float:
    """Clip and step; returns the global gradient norm before clipping. `reductions`: the
    rank's outstanding data-parallel reductions (exec/dp.py), waited for first; `check`
    sees the norm and the counted parameters before the optimizer steps (it may raise)."""
    if reductions is not None:
        reductions.finish_step()
    tied.finish_step()
    counted = [p for p in params if tied.counts_in_norm(p)]
    squared = squared_norm(counted).to(device)
    norm = clip_by_norm(params, squared, clip, reduce=lambda t: all_sum(t, group))
    if check is not None:
        check(norm, counted)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm

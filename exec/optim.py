"""Optimizer pieces shared by the pipeline and the reference loop: AdamW groups,
warm-up + cosine learning rate, and clipping by a global gradient norm."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

__all__ = ["clip_by_norm", "lr_at", "make_adamw", "squared_norm"]


def lr_at(step: int, *, lr: float, warmup: int, steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_ratio * lr` at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_adamw(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    zero_group=None,
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms and biases).

    `zero_group` (a process group): ZeRO-1, torch's ZeroRedundancyOptimizer over it; each
    member keeps the AdamW state of its share of `params` (all members pass the same
    params), steps that share and broadcasts the updated weights."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if zero_group is not None:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(
            groups, optimizer_class=torch.optim.AdamW, process_group=zero_group, lr=lr, betas=betas, eps=eps
        )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def squared_norm(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """Sum of squared gradient entries, in float32, over params that have a gradient."""
    total = torch.zeros((), dtype=torch.float32)
    for p in params:
        if p.grad is not None:
            total = total.to(p.grad.device) + p.grad.detach().float().pow(2).sum()
    return total


def clip_by_norm(
    params: list[torch.nn.Parameter],
    squared: torch.Tensor,
    max_norm: float | None,
    *,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Scale gradients so the global norm is at most `max_norm`; returns the norm.

    `squared` is this process's sum of squares; `reduce` sums it over all processes.
    """
    if reduce is not None:
        squared = reduce(squared)
    norm = float(squared.sqrt())
    if max_norm is not None and max_norm > 0:
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef)
    return norm

"""Stop a run at the first non-finite gradient norm or loss, naming the step and the rank.

Every pipeline rank knows the global gradient norm after the clip's all-reduce, so every
rank sees a non-finite norm at the same step and stops there, before the optimizer step
(one more all-reduce tells each which ranks hold the non-finite gradients). The loss is
known on the last stage's rank only. `--allow-nonfinite` (RunConfig.allow_nonfinite)
turns both checks off.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from ppc.exec.optim import squared_norm

__all__ = ["NonFiniteError", "check_grad_norm", "check_loss"]

HINT = "(--allow-nonfinite trains on)"


class NonFiniteError(RuntimeError):
    """The loss or the global gradient norm is nan or inf: the run cannot go on."""


def check_grad_norm(norm: float, *, step: int, params, rank: int, ranks: int, group, device) -> None:
    """Raise NonFiniteError on every pipeline rank when the global norm is not finite
    (a collective over `group` in that case only); `step` is 0-based."""
    if math.isfinite(norm):
        return
    bad = torch.zeros(ranks, device=device)
    bad[rank] = 0.0 if math.isfinite(float(squared_norm(params))) else 1.0
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, group=group)
    culprits = [str(r) for r, flag in enumerate(bad.tolist()) if flag]
    where = f"rank{'s' if len(culprits) > 1 else ''} {', '.join(culprits)}" if culprits else "no single rank"
    raise NonFiniteError(f"gradient norm is {norm} at step {step + 1} (non-finite gradients on {where}) {HINT}")


def check_loss(loss: float, *, step: int, rank: int) -> None:
    """Raise NonFiniteError when the step's loss is nan or inf; `step` is 0-based."""
    if not math.isfinite(loss):
        raise NonFiniteError(f"loss is {loss} at step {step + 1} on rank {rank} {HINT}")

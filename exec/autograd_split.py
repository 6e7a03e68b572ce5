"""Backward of one stage, whole (B) or split into inputs-only (I) and weights-only (W).

B computes gradients for the stage inputs and parameters in one pass. I computes the
input gradients with the graph retained; W later walks the same graph for the
parameter gradients. Both run the same kernels on the same saved tensors, so I + W
produces exactly B's gradients.

The roots are called through the autograd engine directly because a stage output
whose storage was freed after it was sent keeps its graph but not its shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.graph import _engine_run_backward

__all__ = ["backward_full", "backward_input", "backward_weight", "free_storage"]


def _run(
    roots: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    wrt: Sequence[torch.Tensor],
    *,
    retain: bool,
    accumulate: bool,
) -> tuple[torch.Tensor | None, ...]:
    """One engine pass from `roots` to `wrt`: returns their gradients, or with
    `accumulate` adds them into `.grad` inside the engine (as a plain backward does)."""
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
    """B: input gradients returned, parameter gradients accumulated into `.grad`."""
    _run(roots, grads, [*inputs, *params], retain=False, accumulate=True)
    return _take_grads(inputs)


def backward_input(roots, grads, inputs) -> tuple[torch.Tensor | None, ...]:
    """I: input gradients only; the graph stays alive for the W that follows."""
    return _run(roots, grads, inputs, retain=True, accumulate=False)


def backward_weight(roots, grads, params) -> None:
    """W: parameter gradients accumulated into `.grad`; frees the graph."""
    _run(roots, grads, params, retain=False, accumulate=True)


def free_storage(tensor: torch.Tensor) -> None:
    """Drop a sent output's data while its autograd graph stays usable as a root."""
    if tensor.grad_fn is not None and tensor._base is None:
        tensor.data = torch.empty(0, device=tensor.device, dtype=tensor.dtype)

"""Data parallelism across pipeline replicas: the runtime side of REDUCE_GRAD.

Each of the D replicas runs the same program on its own shard of the global batch. Its
stages' gradients are (1/M) x the sum over its M microbatches, so their average over the
replicas is (1/(D x M)) x the sum over the global batch: the gradient of the loss
normalized over the whole global batch, what the single-process twin computes.

REDUCE_GRAD of stage s (placed by the compiler right after s's last weight-gradient op on
the rank) flattens the gradients of s's parameters into buckets of at most
`BUCKET_BYTES` and starts one asynchronous all-reduce (sum) per bucket on the dp group;
the rank goes on computing. `wait` finishes them: divide by D, copy back into `.grad`.
STEP waits for every outstanding bucket before clipping and stepping, and reduces the
parameters of any stage whose REDUCE_GRAD the program lacks (a program compiled without
`dp`), so a run is correct either way.

A parameter shared by several stages of the rank (a tied weight on one rank) is reduced
once, at the REDUCE_GRAD of the last of those stages in the program, when its gradient is
complete.

With `--zero 1` the optimizer is torch's ZeroRedundancyOptimizer over the dp group: each
replica keeps AdamW state for its share of the rank's parameters, steps that share and
broadcasts it. ZeroRedundancyOptimizer steps from full gradients, so they are still
all-reduced in full: ZeRO-1 here saves optimizer memory, not traffic (a reduce-scatter of
the buckets and an all-gather of the weights would save both; not done).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = ["BUCKET_BYTES", "GradReducer", "buckets"]

BUCKET_BYTES = 25 * 2**20
"""Largest bucket (one all-reduce), as DDP's default bucket_cap_mb."""


@dataclass(slots=True)
class _Bucket:
    params: list[torch.nn.Parameter]
    flat: torch.Tensor
    work: object
    """The async all-reduce's Work handle."""


def buckets(params: list[torch.nn.Parameter], cap: int) -> list[list[torch.nn.Parameter]]:
    """`params` (with gradients) in order, cut into runs of one gradient dtype and device
    of at most `cap` bytes each (a larger gradient is a bucket alone)."""
    out: list[list[torch.nn.Parameter]] = []
    size, kind = 0, None
    for p in params:
        nbytes = p.grad.numel() * p.grad.element_size()
        this = (p.grad.dtype, p.grad.device)
        if not out or this != kind or size + nbytes > cap:
            out.append([])
            size, kind = 0, this
        out[-1].append(p)
        size += nbytes
    return out


class GradReducer:
    """Averages this rank's stage gradients over the dp group, one stage at a time."""

    def __init__(
        self,
        *,
        params: dict[int, list[torch.nn.Parameter]],
        order: list[int],
        group,
        replicas: int,
        bucket_bytes: int = BUCKET_BYTES,
    ):
        """`params`: each local stage's trainable parameters; `order`: the local stages in
        the order the program reduces them (stages it never names come last); `group`:
        the dp process group of `replicas` members."""
        self.group, self.replicas, self.bucket_bytes = group, replicas, bucket_bytes
        order = [*order, *sorted(s for s in params if s not in order)]
        owner: dict[int, int] = {}
        for stage in order:
            for p in params.get(stage, ()):
                owner[id(p)] = stage  # the last stage that uses it wins
        self.owned: dict[int, list[torch.nn.Parameter]] = {s: [] for s in order}
        seen: set[int] = set()
        for stage in order:
            for p in params.get(stage, ()):
                if owner[id(p)] == stage and id(p) not in seen:
                    seen.add(id(p))
                    self.owned[stage].append(p)
        self._pending: list[_Bucket] = []
        self._started: set[int] = set()

    def start(self, stage: int) -> None:
        """Start the all-reduces of `stage`'s gradients (once per step; no-op for D = 1)."""
        if stage in self._started:
            return
        self._started.add(stage)
        if self.replicas == 1:
            return
        with_grad = [p for p in self.owned.get(stage, ()) if p.grad is not None]
        for chunk in buckets(with_grad, self.bucket_bytes):
            flat = torch.cat([p.grad.detach().reshape(-1) for p in chunk])
            work = dist.all_reduce(flat, group=self.group, async_op=True)
            self._pending.append(_Bucket(params=chunk, flat=flat, work=work))
        log.debug("REDUCE_GRAD stage %s: %s buckets in flight", stage, len(self._pending))

    def wait(self, params: list[torch.nn.Parameter] | None = None) -> None:
        """Finish the outstanding buckets (only those holding one of `params`, if given):
        their averaged gradients replace `.grad`."""
        wanted = None if params is None else {id(p) for p in params}
        left = []
        for bucket in self._pending:
            if wanted is not None and not any(id(p) in wanted for p in bucket.params):
                left.append(bucket)
                continue
            bucket.work.wait()
            bucket.flat.div_(self.replicas)
            offset = 0
            for p in bucket.params:
                n = p.grad.numel()
                p.grad.copy_(bucket.flat[offset:offset + n].view_as(p.grad))
                offset += n
        self._pending = left

    def finish_step(self) -> None:
        """Before the optimizer step: reduce the stages no REDUCE_GRAD covered, wait for
        everything, and re-arm for the next step."""
        for stage in self.owned:
            if stage not in self._started:
                self.start(stage)
        self.wait()
        self._started.clear()

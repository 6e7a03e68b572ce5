"""Point-to-point transport: one batch_isend_irecv per group of adjacent comm instructions.

Receives land in buffers from a pool keyed by (shape, dtype), filled from the tensor
specs of the program; after the first step no receive allocates. A `Pending` is what a
group left in flight: waited only when an op needs one of its tensors, or at the step end.
Peers are pipeline ranks, as the program names them; the transport addresses them through
the pipeline's process group (exec/mesh.py), so a pipeline need not be the whole world.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ppc.ir.program import TensorSpec

__all__ = ["BufferPool", "Pending", "Transport", "spec_dtype"]


def spec_dtype(spec: TensorSpec) -> torch.dtype:
    """The torch dtype named by a spec ("float32", "torch.bfloat16", "bf16")."""
    name = spec.dtype.removeprefix("torch.")
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int": "int64"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"tensor spec {spec.name!r} has unknown dtype {spec.dtype!r}")
    return dtype


class BufferPool:
    """Reusable receive buffers; `take` pops a free one or allocates, `give` returns it."""

    def __init__(self, device: torch.device):
        self.device = device
        self._free: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        self.allocated = 0

    def take(self, spec: TensorSpec) -> torch.Tensor:
        key = (tuple(spec.shape), spec_dtype(spec))
        free = self._free[key]
        if free:
            return free.pop()
        self.allocated += 1
        return torch.empty(key[0], dtype=key[1], device=self.device)

    def give(self, tensor: torch.Tensor) -> None:
        self._free[(tuple(tensor.shape), tensor.dtype)].append(tensor)


@dataclass(slots=True)
class Pending:
    """Works of one posted group; `wait` is idempotent and runs `on_done` callbacks once."""

    works: list
    on_done: list = field(default_factory=list)
    done: bool = False

    def wait(self) -> None:
        if self.done:
            return
        for work in self.works:
            work.wait()
        self.done = True
        for callback in self.on_done:
            callback()
        self.on_done.clear()


class Transport:
    """Posts sends and receives of one group as a single batch_isend_irecv.

    `group` is the pipeline's process group: a peer is a rank in it. None: peers are
    global ranks of the default group."""

    def __init__(self, *, device: torch.device, pool: BufferPool, group=None):
        self.device = device
        self.pool = pool
        self.group = group
        self._global: dict[int, int] = {}

    def global_rank(self, peer: int) -> int:
        """The global rank of pipeline rank `peer` (what P2POp's `peer` means)."""
        if self.group is None:
            return peer
        if peer not in self._global:
            self._global[peer] = dist.get_global_rank(self.group, peer)
        return self._global[peer]

    def post(
        self,
        sends: list[tuple[int, list[torch.Tensor]]],
        recvs: list[tuple[int, list[torch.Tensor]]],
    ) -> Pending:
        """Post all `(peer, tensors)` sends and receives (into the given buffers) at once."""
        ops = [dist.P2POp(dist.isend, t, self.global_rank(p), self.group) for p, ts in sends for t in ts]
        ops += [dist.P2POp(dist.irecv, t, self.global_rank(p), self.group) for p, ts in recvs for t in ts]
        works = dist.batch_isend_irecv(ops) if ops else []
        return Pending(works=[w for w in works if w is not None])

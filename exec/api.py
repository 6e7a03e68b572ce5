"""`ppc.Pipeline`: pipeline one's own nn.Module and drive it from one's own training loop.

The model's forward returns the loss (an MLP, a CNN, a Hugging Face model given labels);
ppc traces it with torch.fx, splits it into R x V stages, compiles the schedule and runs
this rank's program each `step(batch)`: the batch is cut into M microbatches along its
first dimension, every rank is handed the same batch (each reads the inputs it needs),
and the loss is normalized over the whole batch, so the gradients are those of one
full-batch step. The optimizer step runs inside (the program's STEP): global-norm
clipping, then the optimizer built by `optimizer(parameters)` (AdamW by default).

Under torchrun (or any initialized process group with one process per pipeline rank):

    pipe = ppc.Pipeline(model, {"x": x0, "y": y0}, schedule="1f1b", ranks=4, microbatches=8)
    for x, y in loader:
        loss = pipe.step({"x": x, "y": y})   # the mean loss on the last stage's rank, else None

`ppc run` trains the built-in and Hugging Face models with the same pieces (the program,
RankRuntime, the tied-weight reducer and the clipping); this class is their library face.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from ppc.exec.mesh import build_mesh
from ppc.exec.runtime import RankRuntime
from ppc.exec.stepping import optimizer_step
from ppc.exec.tied import TiedReducer

from ppc.errors import RunError

__all__ = ["Pipeline"]


class Pipeline:
    """This rank's share of a pipelined model; `step(batch)` trains on one batch."""

    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs: Mapping[str, torch.Tensor],
        *,
        schedule: str = "1f1b",
        ranks: int | None = None,
        microbatches: int,
        virtual: int | None = None,
        split: str | tuple[int, ...] = "cost",
        optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
        clip: float | None = 1.0,
        device: torch.device | str | None = None,
    ):
        """`example_inputs`: one microbatch of every forward input (shapes and dtypes as
        training will pass them); `ranks` defaults to the process group's world size."""
        from ppc.compiler import compile_program
        from ppc.frontend import split as split_graph
        from ppc.frontend import trace
        from ppc.lang import load_schedule

        if not dist.is_initialized():
            raise RunError("ppc.Pipeline needs an initialized process group (run under torchrun)")
        ranks = ranks or dist.get_world_size()
        self.order = load_schedule(schedule).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
        self.microbatches = microbatches
        self.device = torch.device(device or "cpu")
        self.split = split_graph(trace(model, dict(example_inputs)), self.order.stages, by=split)
        self.program = compile_program(self.order, self.split.graph)
        self.mesh = build_mesh(dp=dist.get_world_size() // ranks, pp=ranks, device_type=self.device.type)
        self.rank = self.mesh.rank
        mine = [s for s, r in enumerate(self.program.placement) if r == self.rank]
        self.modules = {s: self.split.stages[s].module.to(self.device) for s in mine}
        self.tied = TiedReducer(graph=self.split.graph, stages=self.split.stages,
                                placement=self.program.placement, rank=self.rank, modules=self.modules,
                                mesh=self.mesh)
        self.params = list(dict.fromkeys(p for m in self.modules.values() for p in m.parameters()
                                         if p.requires_grad))
        self.optimizer = (optimizer or _adamw)(self.params)
        self.clip, self.grad_norm = clip, 0.0
        self.runtime = RankRuntime(
            program=self.program, split=self.split, rank=self.rank, modules=self.modules,
            device=self.device, on_reduce_tied=lambda ins: self.tied.reduce({t.name for t in ins.tensors} or None),
            on_step=self._optimizer_step, group=self.mesh.pp_group,
        )
        self.steps = 0

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """This rank's trainable parameters (each tied one once)."""
        return iter(self.params)

    @property
    def computes_loss(self) -> bool:
        """Whether this rank runs the last stage (its `step` returns the loss)."""
        return self.program.placement[-1] == self.rank

    def step(self, batch: Mapping[str, torch.Tensor]) -> float | None:
        """One training step on `batch` (every rank passes the same batch); the mean loss
        over the microbatches where this rank computes it, else None."""
        microbatches = _cut(batch, self.microbatches, self.device)
        losses = self.runtime.run_step(self.steps, microbatches)
        self.steps += 1
        return sum(losses[m] for m in sorted(losses)) / len(losses) if losses else None

    def _optimizer_step(self) -> None:
        self.grad_norm = optimizer_step(params=self.params, tied=self.tied, optimizer=self.optimizer,
                                        clip=self.clip, group=self.mesh.pp_group, device=self.device)


def _adamw(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3)


def _cut(batch: Mapping[str, torch.Tensor], microbatches: int, device: torch.device) -> list[dict]:
    sizes = {name: value.shape[0] for name, value in batch.items()}
    if len(set(sizes.values())) != 1 or next(iter(sizes.values())) % microbatches:
        raise RunError(f"batch sizes {sizes} must agree and divide into {microbatches} microbatches")
    pieces = {name: value.to(device).chunk(microbatches) for name, value in batch.items()}
    return [{name: chunks[m] for name, chunks in pieces.items()} for m in range(microbatches)]

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

`ppc run` is built on this class: it builds the stages itself (deterministic weights,
one stage at a time) and hands them to `Pipeline.from_stages` (exec/train.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from ppc.exec.dp import GradReducer
from ppc.exec.mesh import PipelineMesh, build_mesh
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
        training will pass them); `ranks` defaults to the process group's world size, and
        a world of D x `ranks` processes runs D replicas (each passes its own batch; their
        gradients are averaged)."""
        from ppc.compiler import compile_program
        from ppc.frontend import split as split_graph
        from ppc.frontend import trace
        from ppc.lang import load_schedule

        if not dist.is_initialized():
            raise RunError("ppc.Pipeline needs an initialized process group (run under torchrun)")
        ranks = ranks or dist.get_world_size()
        replicas = dist.get_world_size() // ranks
        order = load_schedule(schedule).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
        device = torch.device(device or "cpu")
        split_model = split_graph(trace(model, dict(example_inputs)), order.stages, by=split)
        program = compile_program(order, split_model.graph, dp=replicas)
        mesh = build_mesh(dp=replicas, pp=ranks, device_type=device.type)
        mine = [s for s, r in enumerate(program.placement) if r == mesh.rank]
        self._assemble(program=program, split=split_model, mesh=mesh,
                       modules={s: split_model.stages[s].module.to(device) for s in mine},
                       optimizer=optimizer or _adamw, clip=clip, device=device)

    @classmethod
    def from_stages(
        cls,
        *,
        program,
        split,
        mesh: PipelineMesh,
        modules: dict[int, torch.nn.Module],
        optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
        clip: float | None,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        observer=None,
        trace: bool = False,
        check_norm: Callable[[float, list[torch.nn.Parameter], int], None] | None = None,
    ) -> Pipeline:
        """A pipeline of stages already built: a compiled `program`, its `split`, this
        rank's stage `modules` on `device` (how `ppc run` builds it, exec/train.py).
        `check_norm(norm, counted_params, step)` may refuse a step before the optimizer runs."""
        pipe = cls.__new__(cls)
        pipe._assemble(program=program, split=split, mesh=mesh, modules=modules, optimizer=optimizer,
                       clip=clip, device=device, autocast_dtype=autocast_dtype, observer=observer,
                       trace=trace, check_norm=check_norm)
        return pipe

    def _assemble(self, *, program, split, mesh, modules, optimizer, clip, device, autocast_dtype=None,
                  observer=None, trace=False, check_norm=None) -> None:
        self.program, self.split, self.mesh, self.device = program, split, mesh, device
        self.microbatches, self.rank = program.microbatches, mesh.rank
        self.modules = modules
        self.tied = TiedReducer(graph=split.graph, stages=split.stages, placement=program.placement,
                                rank=self.rank, modules=modules, mesh=mesh)
        # dict.fromkeys: a tied weight shared by two local stages is one parameter
        self.params = list(dict.fromkeys(p for m in modules.values() for p in m.parameters() if p.requires_grad))
        self.optimizer = optimizer(self.params)
        self.grads = GradReducer(
            params={s: [p for p in m.parameters() if p.requires_grad] for s, m in modules.items()},
            order=[ins.stage for ins in program.instructions[self.rank] if ins.op.name == "REDUCE_GRAD"],
            group=mesh.dp_group, replicas=mesh.layout.dp,
        )
        self.clip, self.grad_norm, self.steps = clip, 0.0, 0
        self._check_norm = check_norm
        self.runtime = RankRuntime(
            program=program, split=split, rank=self.rank, modules=modules, device=device,
            autocast_dtype=autocast_dtype, on_reduce_tied=self._reduce_tied,
            on_reduce_grad=lambda ins: self.grads.start(ins.stage), on_step=self._optimizer_step,
            observer=observer, trace=trace, group=mesh.pp_group,
        )

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """This rank's trainable parameters (each tied one once)."""
        return iter(self.params)

    @property
    def computes_loss(self) -> bool:
        """Whether this rank runs the last stage (its `step` returns the loss)."""
        return self.program.placement[-1] == self.rank

    def step(self, batch: Mapping[str, torch.Tensor]) -> float | None:
        """One training step on `batch` (every rank of a replica passes the same batch);
        the mean loss over the microbatches where this rank computes it, else None."""
        losses = self.step_microbatches(_cut(batch, self.microbatches, self.device))
        return sum(losses[m] for m in sorted(losses)) / len(losses) if losses else None

    def step_microbatches(self, microbatches: list[dict[str, torch.Tensor]]) -> dict[int, float]:
        """One training step on microbatches already cut; each microbatch's loss by index
        where this rank computes it (empty elsewhere)."""
        losses = self.runtime.run_step(self.steps, microbatches)
        self.steps += 1
        return losses

    def _reduce_tied(self, ins) -> None:
        names = {t.name for t in ins.tensors} or None
        self.grads.wait(self.tied.params(names))  # a tied weight's dp average lands before the pp sum
        self.tied.reduce(names)

    def _optimizer_step(self) -> None:
        step = self.steps

        def check(norm: float, counted) -> None:
            self._check_norm(norm, counted, step)

        self.grad_norm = optimizer_step(
            params=self.params, tied=self.tied, optimizer=self.optimizer, clip=self.clip,
            group=self.mesh.pp_group, device=self.device, reductions=self.grads,
            check=None if self._check_norm is None else check,
        )


def _adamw(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3)


def _cut(batch: Mapping[str, torch.Tensor], microbatches: int, device: torch.device) -> list[dict]:
    sizes = {name: value.shape[0] for name, value in batch.items()}
    if len(set(sizes.values())) != 1 or next(iter(sizes.values())) % microbatches:
        raise RunError(f"batch sizes {sizes} must agree and divide into {microbatches} microbatches")
    pieces = {name: value.to(device).chunk(microbatches) for name, value in batch.items()}
    return [{name: chunks[m] for name, chunks in pieces.items()} for m in range(microbatches)]

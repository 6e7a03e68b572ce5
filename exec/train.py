"""The pipeline training loop of one rank: build its stages, run the program every step,
reduce gradients across replicas and tied weights, clip by the global norm, step AdamW,
report, checkpoint.

The rank's place in the run comes from a `PipelineMesh` (exec/mesh.py): its pipeline rank
picks its program, its replica its shard of the global batch, and every collective goes
through the group the mesh hands out. Replica 0 alone writes metrics and checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from ppc.exec.api import Pipeline
from ppc.exec.checkpoint import full_names, load_resumable, save_merged, save_resumable
from ppc.exec.config import RunConfig
from ppc.exec.data import load_data, load_tokenizer
from ppc.exec.mesh import PipelineMesh, build_mesh
from ppc.exec.metrics import MetricsWriter, StepMetrics
from ppc.exec.nonfinite import check_grad_norm, check_loss
from ppc.exec.optim import lr_at, make_adamw
from ppc.exec.plan import Plan
from ppc.exec.resume import run_meta
from ppc.exec.runtime import RankRuntime

from ppc.errors import RunError

log = logging.getLogger(__name__)

__all__ = ["RankResult", "autocast_dtype", "train_pipeline"]


@dataclass(slots=True, kw_only=True)
class RankResult:
    rank: int
    """The pipeline rank."""
    replica: int = 0
    history: list[StepMetrics] = field(default_factory=list)
    """Filled on the rank that computes the loss (of every replica)."""
    runtime: RankRuntime | None = None
    modules: dict[int, torch.nn.Module] = field(default_factory=dict)
    """This rank's stage modules after training."""


def autocast_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU when asked; plain fp32 otherwise."""
    return torch.bfloat16 if config.dtype == "bf16" and device.type == "cuda" else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_pipeline(
    config: RunConfig,
    plan: Plan,
    *,
    device: torch.device,
    on_metrics: Callable[[StepMetrics], None] | None = None,
    observer=None,
    mesh: PipelineMesh | None = None,
) -> RankResult:
    """Train on this rank. torch.distributed must be initialized with world = dp x R;
    `mesh` None builds the (config.dp, R) mesh (collective: every rank calls it)."""
    program, split = plan.program, plan.split
    if mesh is None:
        mesh = build_mesh(dp=config.dp, pp=program.ranks, device_type=device.type)
    if mesh.layout.dp != config.dp:
        raise RunError(f"the mesh has {mesh.layout.dp} replicas, the run config dp={config.dp}")
    rank, pp_group = mesh.rank, mesh.pp_group
    torch.manual_seed(config.seed + rank)
    mine = [s for s, r in enumerate(program.placement) if r == rank]
    modules = {s: plan.materialize(s, device) for s in mine}
    for module in modules.values():
        module.train()
    zero = config.zero >= 1 and config.dp > 1

    def check(norm: float, counted, step: int) -> None:
        check_grad_norm(norm, step=step, params=counted, rank=rank, ranks=program.ranks, group=pp_group,
                        device=device)

    pipe = Pipeline.from_stages(
        program=program, split=split, mesh=mesh, modules=modules, clip=config.clip, device=device,
        optimizer=lambda params: make_adamw(params, lr=config.lr, weight_decay=config.weight_decay,
                                            zero_group=mesh.dp_group if zero else None),
        autocast_dtype=autocast_dtype(config, device), observer=observer, trace=config.trace is not None,
        check_norm=None if config.allow_nonfinite else check,
    )
    optimizer, runtime = pipe.optimizer, pipe.runtime
    data = load_data(
        config.data, tokenizer=load_tokenizer(config.tokenizer), seq_len=config.seq_len, seed=config.seed,
        column=config.data_column, cache_dir=config.data_cache,
    )
    meta = run_meta(config, program, split)
    named = full_names(modules, split.stages)  # after Pipeline tied the weights: one parameter each
    if config.resume:
        pipe.steps = load_resumable(config.resume, params=named, optimizer=optimizer, meta=meta, group=pp_group)
    start = pipe.steps
    loss_rank = program.placement[program.stages - 1]
    reports = rank == loss_rank and mesh.replica == 0
    writer = None
    if reports and config.metrics:
        writer = MetricsWriter(config.metrics, append=bool(config.resume))
    result = RankResult(rank=rank, replica=mesh.replica, runtime=runtime, modules=modules)
    try:
        for step in range(start, config.steps):
            lr = lr_at(step, lr=config.lr, warmup=config.warmup, steps=config.steps, min_ratio=config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = data.microbatches(
                step, microbatches=config.microbatches, microbatch_size=config.microbatch_size,
                replicas=config.dp, replica=mesh.replica,
            )
            _sync(device)
            began = time.perf_counter()
            losses = pipe.step_microbatches(batch)
            _sync(device)
            elapsed = time.perf_counter() - began
            if rank == loss_rank and not config.allow_nonfinite:
                check_loss(sum(losses.values()) / len(losses), step=step, rank=rank)
            if rank == loss_rank:
                record = StepMetrics(
                    step=step + 1,
                    steps=config.steps,
                    loss=_global_loss(losses, mesh, device),
                    lr=lr,
                    step_time_s=elapsed,
                    tokens_per_s=config.tokens_per_step / elapsed,
                    grad_norm=pipe.grad_norm,
                )
                result.history.append(record)
                if writer is not None:
                    writer.write(record)
                if on_metrics is not None and reports:
                    on_metrics(record)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                if zero:
                    optimizer.consolidate_state_dict(to=0)  # on replica 0 (collective over dp)
                if mesh.replica == 0:  # replicas hold equal state
                    save_resumable(
                        config.checkpoint_dir or "checkpoints", step=step + 1, rank=rank, params=named,
                        optimizer=optimizer, meta=meta, group=pp_group,
                    )
    finally:
        if writer is not None:
            writer.close()
    if config.save and mesh.replica == 0:
        save_merged(config.save, model=plan.model, rank=rank, named=named, group=pp_group,
                    tokenizer=config.tokenizer)
    return result


def _global_loss(losses: dict[int, float], mesh: PipelineMesh, device: torch.device) -> float:
    """The mean loss over the global batch: this replica's microbatch losses summed, the
    sums added over the dp group, divided by every replica's microbatches."""
    total = torch.tensor([sum(losses[m] for m in sorted(losses))], dtype=torch.float64, device=device)
    if mesh.layout.dp > 1:
        dist.all_reduce(total, group=mesh.dp_group)
    return float(total) / (len(losses) * mesh.layout.dp)

"""One rank of `ppc run`: join the process group, build the mesh and the plan, train, write
the trace. The world is dp x R ranks (exec/mesh.py); with dp = 1 it is one pipeline."""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist
from ppc.exec.config import RunConfig
from ppc.exec.mesh import MeshLayout, build_mesh
from ppc.exec.plan import build_plan
from ppc.exec.trace import write_trace
from ppc.exec.train import train_pipeline

from ppc.errors import RunError
from ppc.host import threads_per_rank

log = logging.getLogger(__name__)

__all__ = ["start_worker"]


def start_worker(config: RunConfig, *, board, on_metrics=None, fault: str | None = None) -> int:
    """Train as rank RANK of WORLD_SIZE (set by torchrun); returns the exit code."""
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    layout = MeshLayout(dp=config.dp, pp=config.ranks)
    if world != layout.world:
        replicas = f" x dp {config.dp}" if config.dp > 1 else ""
        raise RunError(
            f"world size {world} != schedule ranks {config.ranks}{replicas}: start {layout.world} "
            f"processes or pass --ranks {world // config.dp or 1}"
        )
    device = _device(config)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=config.timeout)
    dist.init_process_group(backend, timeout=timeout)
    check = torch.ones(1, device=device)
    dist.all_reduce(check)  # every rank is up
    mesh = build_mesh(dp=config.dp, pp=config.ranks, device_type=device.type)
    dist.all_reduce(check, group=mesh.pp_group)  # NCCL's first P2P batch needs a prior collective
    plan = build_plan(config)
    observer = board.update if fault is None else _with_fault(board, rank, fault)
    result = train_pipeline(config, plan, device=device, on_metrics=on_metrics, observer=observer, mesh=mesh)
    if config.trace and mesh.replica == 0:
        records = result.runtime.trace_records or []
        write_trace(config.trace, rank=mesh.rank, records=records, group=mesh.pp_group)
    dist.barrier()  # no rank tears down its process group while a peer still talks to it
    board.update(config.steps, "done")
    return 0


def _device(config: RunConfig) -> torch.device:
    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise RunError("--device cuda but CUDA is not available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    # ranks on one host would each start a thread per core; share the cores instead
    local = int(os.environ.get("LOCAL_WORLD_SIZE", config.dp * config.ranks))
    torch.set_num_threads(threads_per_rank(local))
    return torch.device("cpu")


def _with_fault(board, rank: int, fault: str):
    """Observer that raises at "RANK:STEP:INSTRUCTION" (1-based step), for fault tests."""
    want_rank, want_step, want_ins = fault.split(":")

    def observe(step: int, instruction) -> None:
        board.update(step, instruction)
        if rank == int(want_rank) and step + 1 == int(want_step) and str(instruction) == want_ins:
            raise RuntimeError("injected fault (PPC_FAULT_AT)")

    return observe

"""Checkpoints: per-rank stage state for resuming, and one merged Hugging Face model.

Layout of a resumable checkpoint directory:
    DIR/step-000012/rank-0.pt ...  weights of the rank's stages, optimizer, step, data position
    DIR/latest                     name of the newest complete step directory

`rank` is the pipeline rank and `group` the pipeline's process group (None: the default
group): with several replicas only replica 0 writes, every replica may read.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from ppc.errors import RunError

log = logging.getLogger(__name__)

__all__ = ["load_rank_state", "save_merged", "save_rank_state"]


def _barrier(group=None) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=group)


def save_rank_state(
    directory: str, *, step: int, rank: int, modules, optimizer, meta: dict, group=None
) -> Path:
    """Write this rank's state after `step` steps; rank 0 marks it complete last."""
    step_dir = Path(directory) / f"step-{step:06d}"
    step_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "data_position": meta.get("sequences_per_step", 0) * step,
        "stages": {s: m.state_dict() for s, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "meta": meta,
    }
    tmp = step_dir / f"rank-{rank}.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(step_dir / f"rank-{rank}.pt")
    _barrier(group)
    if rank == 0:
        (Path(directory) / "latest").write_text(step_dir.name + "\n")
    log.info("checkpoint: rank %s wrote %s", rank, step_dir)
    return step_dir


def resolve(directory: str) -> Path:
    """The step directory to resume from: DIR/latest's target, or DIR itself."""
    root = Path(directory)
    latest = root / "latest"
    if latest.is_file():
        return root / latest.read_text().strip()
    if any(root.glob("rank-*.pt")):
        return root
    raise RunError(f"no checkpoint in {directory} (expected a 'latest' file or rank-*.pt files)")


def load_rank_state(directory: str, *, rank: int, modules, optimizer, meta: dict) -> int:
    """Restore this rank's stages and optimizer; returns the number of steps done."""
    path = resolve(directory) / f"rank-{rank}.pt"
    if not path.is_file():
        raise RunError(f"checkpoint {path} is missing")
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state["meta"]
    for key in ("schedule", "ranks", "stages", "placement", "model", "microbatches", "dp"):
        default = 1 if key == "dp" else None  # checkpoints from before data parallelism
        if saved.get(key, default) != meta.get(key, default):
            raise RunError(
                f"checkpoint {path} was written with {key}={saved.get(key, default)!r}, "
                f"this run has {meta.get(key, default)!r}"
            )
    for s, module in modules.items():
        module.load_state_dict(state["stages"][s])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def save_merged(directory: str, *, model: str, rank: int, named: dict[str, torch.Tensor], group=None) -> None:
    """Gather every rank's full-model-named weights into DIR as a Hugging Face checkpoint
    (config.json + model.safetensors) that AutoModelForCausalLM.from_pretrained loads."""
    out = Path(directory)
    parts = out / ".ppc-parts"
    parts.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().float().cpu() for k, v in named.items()}, parts / f"rank-{rank}.pt")
    _barrier(group)
    if rank == 0:
        # only this run's ranks: a reused DIR may hold parts of an earlier, wider run
        world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
        files = [parts / f"rank-{r}.pt" for r in range(world)]
        merged: dict[str, torch.Tensor] = {}
        for part in files:
            merged.update(torch.load(part, map_location="cpu", weights_only=True))
        write_hf(out, model=model, weights=merged)
        shutil.rmtree(parts)
    _barrier(group)


def write_hf(out: Path, *, model: str, weights: dict[str, torch.Tensor]) -> None:
    """Load `weights` into the model's skeleton (built on meta) and save_pretrained it."""
    from ppc.frontend import build_model

    skeleton = build_model(model, device="meta")
    result = skeleton.load_state_dict(weights, strict=False, assign=True)
    if result.unexpected_keys:
        raise RunError(f"merged checkpoint has unknown weights: {result.unexpected_keys[:3]}")
    if hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()
    left = [n for n, p in skeleton.named_parameters() if p.is_meta]
    if left:
        raise RunError(f"merged checkpoint lacks weights: {left[:3]}")
    skeleton.save_pretrained(out, safe_serialization=True)

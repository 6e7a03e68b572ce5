"""Checkpoints: per-rank stage state for resuming, and one merged Hugging Face model.

Layout of a resumable checkpoint directory:
    DIR/step-000012/rank-0.pt ...  weights of the rank's stages, optimizer, step, data position
    DIR/latest                     name of the newest complete step directory

`rank` is the pipeline rank and `group` the pipeline's process group (None: the default
group): with several replicas only replica 0 writes, every replica may read.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
from ppc.exec.resume import META_FILE, mismatch

from ppc.errors import RunError

log = logging.getLogger(__name__)

__all__ = ["load_rank_state", "read_state", "save_merged", "save_rank_state"]


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
        record = {**meta, "step": step, "data_position": state["data_position"]}
        (step_dir / META_FILE).write_text(json.dumps(record, indent=1) + "\n")
        (Path(directory) / "latest").write_text(step_dir.name + "\n")
    log.info("checkpoint: rank %s wrote %s", rank, step_dir)
    return step_dir


def resolve(directory: str) -> Path:
    """The step directory to resume from: DIR/latest's target, or DIR itself."""
    root = Path(directory)
    latest = root / "latest"
    if latest.is_file():
        return root / latest.read_text(errors="replace").strip()
    if any(root.glob("rank-*.pt")):
        return root
    raise RunError(f"no checkpoint in {directory} (expected a 'latest' file or rank-*.pt files)")


def load_rank_state(directory: str, *, rank: int, modules, optimizer, meta: dict) -> int:
    """Restore this rank's stages and optimizer; returns the number of steps done."""
    path = resolve(directory) / f"rank-{rank}.pt"
    if not path.is_file():
        raise RunError(f"checkpoint {path} is missing")
    state = read_state(path)
    problem = mismatch({**state["meta"], "step": state["step"], "data_position": state["data_position"]},
                       meta, where=f"checkpoint {path}")
    if problem:
        raise RunError(problem)
    for s, module in modules.items():
        module.load_state_dict(state["stages"][s])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def read_state(path: Path, *, mmap: bool = False) -> dict:
    """A rank file's state dict; a truncated or foreign file is one RunError naming it."""
    if not zipfile.is_zipfile(path):
        raise RunError(f"checkpoint {path} is truncated or not a ppc checkpoint (not a torch zip file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise RunError(f"checkpoint {path} cannot be read: {type(error).__name__}: {error}") from None
    if not isinstance(state, dict) or not {"step", "meta", "stages", "optimizer"} <= state.keys():
        raise RunError(f"checkpoint {path} is not a ppc rank checkpoint (missing step, meta, stages or optimizer)")
    state.setdefault("data_position", None)
    return state


def save_merged(directory: str, *, model: str, rank: int, named: dict[str, torch.Tensor], group=None,
                tokenizer: str | None = None) -> None:
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
        write_hf(out, model=model, weights=merged, tokenizer=tokenizer)
        shutil.rmtree(parts)
    _barrier(group)


def write_hf(out: Path, *, model: str, weights: dict[str, torch.Tensor], tokenizer: str | None = None) -> None:
    """Load `weights` into the model's skeleton (built on meta) and save_pretrained it, with
    the run's tokenizer (a local Hugging Face tokenizer directory) beside it when given."""
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
    if tokenizer is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer, local_files_only=True).save_pretrained(out)

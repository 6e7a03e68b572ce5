"""Checkpoints: resumable training state, and one merged Hugging Face model.

A resumable checkpoint is written and read with torch.distributed.checkpoint (DCP) over the
pipeline's process group, in safetensors files (DCP's HuggingFaceStorageWriter and Reader),
keyed by full model parameter names: the names of the unsplit model's state_dict
(`model.layers.3.self_attn.q_proj.weight`; a tied weight once, under its first name). The
AdamW state of a parameter is stored next to it as `optim.state.NAME.exp_avg`,
`...exp_avg_sq` and `...step`. Each rank writes the names its stages own (DCP writes a
tied weight held by two ranks once) and reads the names its stages own, so a checkpoint
resumes under any schedule, ranks count, virtual stages or split of the same model.
exec/resume.py describes the directory (meta.json + shard-*.safetensors + latest) and
decides which recorded settings must match.

Nothing is unpickled on load: meta.json is JSON, safetensors headers are JSON, tensor data
is raw bytes, and DCP's safetensors reader builds its metadata from those headers (unlike
DCP's default FileSystemReader, whose .metadata file is a pickle). No random-number state
is saved: a training step draws none (the data order is a function of seed and step; the
models train without dropout; recompute forks the generator), so nothing is lost.

Only the ranks of replica 0 write (`group`: replica 0's pipeline group; with ZeRO-1 the
optimizer state is consolidated on replica 0 first); every replica reads, through its own
pipeline group. The files hold one whole copy of the state, whatever the replicas count,
so a run with another number of replicas (ZeRO-1 or not) reads the same files: each
replica loads all of its stages' state and ZeroRedundancyOptimizer.load_state_dict keeps
its own shard of it. Needs torch >= 2.9 (HuggingFaceStorageWriter(save_distributed=...)).
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from ppc.exec.resume import (
    FORMAT,
    META_FILE,
    OPTIM_PREFIX,
    mismatch,
    missing_weights,
    read_record,
    resolve,
    tensor_index,
)
from torch.distributed.checkpoint.api import CheckpointException

from ppc.errors import RunError

log = logging.getLogger(__name__)

__all__ = ["full_names", "load_resumable", "require_storage", "save_merged", "save_resumable", "write_hf"]

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32}
"""safetensors dtype names -> torch (for the optimizer state buffers a load fills)."""

DCP_ERRORS = (CheckpointException, OSError, RuntimeError, ValueError)
"""What a failed DCP save or load raises (a file's own errors, or all ranks' gathered)."""


def _barrier(group=None) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=group)


def require_storage():
    """DCP's safetensors reader and writer classes, or a RunError on a torch too old."""
    problem = (f"resumable checkpoints need torch >= 2.9 (torch.distributed.checkpoint's "
               f"HuggingFaceStorageWriter); this is torch {torch.__version__}")
    try:
        from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
    except ImportError:
        raise RunError(problem) from None
    if "save_distributed" not in inspect.signature(HuggingFaceStorageWriter).parameters:
        raise RunError(problem)
    return HuggingFaceStorageReader, HuggingFaceStorageWriter


def full_names(modules: dict[int, torch.nn.Module], stages) -> dict[str, torch.nn.Parameter]:
    """This rank's parameters by full model name; `stages[s].param_names` maps a stage's
    local names to full ones (a tied weight shared by two local stages is one entry)."""
    return {
        stages[s].param_names.get(local, local): p
        for s, module in modules.items()
        for local, p in module.named_parameters()
    }


def save_resumable(
    directory: str, *, step: int, rank: int, params: dict[str, torch.nn.Parameter], optimizer, meta: dict,
    group=None,
) -> Path:
    """Write weights and optimizer state after `step` steps (collective over `group`) into
    DIR/step-NNNNNN; pipeline rank 0 writes meta.json and marks it complete (DIR/latest)
    last. A reused step directory is replaced whole, never mixed with older files."""
    _, writer = require_storage()
    import torch.distributed.checkpoint as dcp

    root = Path(directory)
    final = root / f"step-{step:06d}"
    partial = root / f".{final.name}.partial"
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier(group)
    state = {name: p.detach() for name, p in params.items()}
    state.update(_optimizer_state(optimizer, params))
    try:
        dcp.save(state, storage_writer=writer(str(partial), save_distributed=True), process_group=group)
    except DCP_ERRORS as error:  # DCP gathers every rank's failure into one CheckpointException
        raise RunError(f"cannot write checkpoint {final}: {_first_line(error)}") from None
    if rank == 0:
        record = {"format": FORMAT, **meta, "step": step,
                  "data_position": meta.get("sequences_per_step", 0) * step}
        (partial / META_FILE).write_text(json.dumps(record, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        latest = root / ".latest.tmp"
        latest.write_text(final.name + "\n")
        latest.replace(root / "latest")
    _barrier(group)
    log.info("checkpoint: rank %s wrote %s tensors to %s", rank, len(state), final)
    return final


def _optimizer_state(optimizer, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state keyed `optim.state.NAME.KEY`. Its state_dict
    numbers parameters in param_groups order (torch.optim and ZeroRedundancyOptimizer alike;
    the latter after consolidate_state_dict on this process)."""
    name_of = {id(p): name for name, p in params.items()}
    order = [p for group in optimizer.param_groups for p in group["params"]]
    out: dict[str, torch.Tensor] = {}
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in (entry or {}).items():
            tensor = value.detach() if torch.is_tensor(value) else torch.tensor(float(value))
            out[f"{OPTIM_PREFIX}{name_of[id(order[index])]}.{key}"] = tensor
    return out


def load_resumable(
    directory: str, *, params: dict[str, torch.nn.Parameter], optimizer, meta: dict, group=None,
) -> int:
    """Restore `params` (full name -> this rank's parameter) and their optimizer state from
    the checkpoint in `directory` (collective over `group`); returns the steps done."""
    reader, _ = require_storage()
    import torch.distributed.checkpoint as dcp

    step_dir = resolve(directory)
    saved = read_record(step_dir)
    problem = mismatch(saved, meta, where=f"checkpoint {step_dir}")
    if problem:
        raise RunError(problem)
    index = tensor_index(step_dir)
    problem = missing_weights(index, {name: tuple(p.shape) for name, p in params.items()}, where=f"checkpoint {step_dir}")
    if problem:
        raise RunError(problem)
    state: dict[str, torch.Tensor] = {name: p.detach() for name, p in params.items()}
    buffers = {key: torch.empty(shape, dtype=DTYPES.get(dtype, torch.float32))
               for key, (dtype, shape) in index.items() if _owner(key, params) is not None}
    try:
        dcp.load({**state, **buffers}, storage_reader=reader(str(step_dir)), process_group=group)
    except DCP_ERRORS as error:
        raise RunError(f"checkpoint {step_dir} cannot be read: {_first_line(error)}") from None
    optimizer.load_state_dict(_indexed(optimizer, params, buffers))
    log.info("checkpoint: resumed %s parameters from %s", len(params), step_dir)
    return int(saved["step"])


def _owner(key: str, params) -> tuple[str, str] | None:
    """(parameter name, state key) of an `optim.state.NAME.KEY` key for a parameter in
    `params`, else None."""
    if not key.startswith(OPTIM_PREFIX):
        return None
    name, _, state_key = key[len(OPTIM_PREFIX):].rpartition(".")
    return (name, state_key) if name in params else None


def _indexed(optimizer, params: dict[str, torch.nn.Parameter], buffers: dict[str, torch.Tensor]) -> dict:
    """A state_dict for `optimizer.load_state_dict`: its own param groups, the loaded state
    numbered in param_groups order."""
    by_name: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in buffers.items():
        name, state_key = _owner(key, params)
        by_name.setdefault(name, {})[state_key] = tensor
    name_of = {id(p): name for name, p in params.items()}
    groups, state, index = [], {}, 0
    for group in optimizer.param_groups:
        numbers = []
        for p in group["params"]:
            if name_of[id(p)] in by_name:
                state[index] = by_name[name_of[id(p)]]
            numbers.append(index)
            index += 1
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": numbers})
    return {"state": state, "param_groups": groups}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def save_merged(directory: str, *, model: str, rank: int, named: dict[str, torch.Tensor], group=None,
                tokenizer: str | None = None) -> None:
    """Gather every rank's full-model-named weights into DIR as a Hugging Face checkpoint
    (config.json + model.safetensors) that AutoModelForCausalLM.from_pretrained loads."""
    from safetensors.torch import load_file, save_file

    out = Path(directory)
    parts = out / ".ppc-parts"
    parts.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in named.items()},
              parts / f"rank-{rank}.safetensors")
    _barrier(group)
    if rank == 0:
        # only this run's ranks: a reused DIR may hold parts of an earlier, wider run
        world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
        merged: dict[str, torch.Tensor] = {}
        for r in range(world):
            merged.update(load_file(parts / f"rank-{r}.safetensors"))
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

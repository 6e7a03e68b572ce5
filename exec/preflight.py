"""Preflight: everything `ppc run` can know in the launcher, checked before a worker starts.

A mistake found here is one RunError line (the CLI exits 2) within seconds, instead of
every rank starting, failing alike and printing its own traceback. In order, cheapest
first: the numbers (finite and in range), the device, the output paths (writable now,
not after the last step), the data (readable, not empty; tokenized once into the
token cache the ranks read), the model (sequence
length, tokenizer vocabulary), the plan (the schedule expanded, lowered and verified for
this model's split: the very plan every rank builds) and the world size, and last a
resumed checkpoint (complete, intact, every parameter there, recorded trajectory equal
to this run's).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

from ppc.exec.config import RunConfig
from ppc.exec.resume import mismatch, missing_weights, read_record, resolve, run_meta, tensor_index

from ppc.errors import RunError

log = logging.getLogger(__name__)

__all__ = ["preflight"]

MAX_SEED = 2**32
"""Seeds are 0 <= seed < 2**32 (the data order multiplies the seed; it must stay in int64)."""


def preflight(config: RunConfig, *, world: int) -> None:
    """Check `config` for a run of `world` processes; raises RunError (or another PpcError)."""
    check_numbers(config)
    check_device(config, world=world)
    check_outputs(config)
    check_data(config)
    check_model(config)
    plan = _plan(config, world=world)
    if config.resume is not None:
        check_resume(config, plan)


def check_numbers(config: RunConfig) -> None:
    """Learning rate, weight decay, clip, timeout finite and in range; step counts consistent."""
    _finite("--lr", config.lr, low=0.0, strict=True)
    _finite("--weight-decay", config.weight_decay, low=0.0)
    if config.clip is not None:
        _finite("--clip", config.clip, low=0.0)
    _finite("--timeout", config.timeout, low=0.0, strict=True)
    _finite("min_lr_ratio", config.min_lr_ratio, low=0.0)
    if config.warmup > config.steps:
        raise RunError(f"--warmup {config.warmup} is more than --steps {config.steps}: "
                       f"the learning rate would never reach --lr")
    if config.checkpoint_every < 0:
        raise RunError(f"--checkpoint-every must be >= 0 (0: off), got {config.checkpoint_every}")
    if config.checkpoint_every > config.steps:
        raise RunError(f"--checkpoint-every {config.checkpoint_every} is more than --steps {config.steps}: "
                       f"no checkpoint would be written")
    if not 0 <= config.seed < MAX_SEED:
        raise RunError(f"--seed must be in [0, 2**32), got {config.seed}")


def _finite(flag: str, value: float, *, low: float, strict: bool = False) -> None:
    if not math.isfinite(value) or value < low or (strict and value == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise RunError(f"{flag} must be a finite number {bound}, got {value}")


def check_device(config: RunConfig, *, world: int) -> None:
    """--device cuda needs CUDA and a GPU per local process."""
    if config.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise RunError("--device cuda but CUDA is not available on this machine (use --device cpu)")
    count = torch.cuda.device_count()
    if world > count:
        raise RunError(f"--device cuda: {world} processes on this machine but {count} GPU(s)")


def check_outputs(config: RunConfig) -> None:
    """Every path the run will write can be written now."""
    if config.save:
        _writable_dir("--save", Path(config.save))
    if config.checkpoint_every:
        from ppc.exec.checkpoint import require_storage

        require_storage()
        _writable_dir("--checkpoint-dir", Path(config.checkpoint_dir or "checkpoints"))
    for flag, name in (("--metrics", config.metrics), ("--trace", config.trace)):
        if name:
            path = Path(name)
            if path.is_dir():
                raise RunError(f"{flag} {name} is a directory, expected a file name")
            _writable_dir(flag, path.parent, of=path)


def _writable_dir(flag: str, directory: Path, *, of: Path | None = None) -> None:
    """`directory` exists and takes a new file, or its nearest existing ancestor does (the
    run creates the rest); probed with a real file, which also holds for root and read-only
    mounts."""
    shown = of or directory
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"{flag} {shown}: {existing} is not a directory")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".ppc-write-probe-")
    except OSError as error:
        raise RunError(f"{flag} {shown}: cannot write in {existing}: {error.strerror or error}") from None
    os.close(handle)
    os.unlink(probe)


def check_data(config: RunConfig) -> None:
    """--tokenizer a directory; --data readable (UTF-8 text, the column there), holding text
    and at least one sequence. This tokenizes --data into the token cache, so the ranks
    only map it (exec/token_cache.py)."""
    from ppc.exec.data import load_tokenizer, load_tokens

    if config.tokenizer is not None and not Path(config.tokenizer).is_dir():
        raise RunError(f"tokenizer directory not found: {config.tokenizer}")
    if config.data is None:
        return
    if config.data_cache:
        _writable_dir("--data-cache", Path(config.data_cache))
    tokens = load_tokens(config.data, tokenizer=load_tokenizer(config.tokenizer), column=config.data_column,
                         cache_dir=config.data_cache).numel()
    if tokens < config.seq_len:
        kind = "byte tokens" if config.tokenizer is None else "tokens"
        raise RunError(f"--data {config.data} holds {tokens:,} {kind}, fewer than one "
                       f"sequence of --seq-len {config.seq_len}")


def check_model(config: RunConfig) -> None:
    """The model exists, takes --seq-len positions, and its vocabulary holds the tokenizer's."""
    from ppc.exec.data import load_tokenizer
    from ppc.exec.plan import check_model as check_model_builds

    from ppc.frontend.models import load_config

    check_model_builds(config)  # the model builds (on meta) and its weights fit it
    model = load_config(config.model)
    limit = getattr(model, "max_position_embeddings", None) or getattr(model, "n_positions", None)
    if limit is not None and config.seq_len > limit:
        raise RunError(f"--seq-len {config.seq_len} exceeds {config.model}'s limit of {limit} positions")
    vocab = getattr(model, "vocab_size", None)
    tokens = load_tokenizer(config.tokenizer).vocab_size
    if vocab is not None and tokens > vocab:
        source = f"the tokenizer in {config.tokenizer}" if config.tokenizer else "byte tokens (no --tokenizer)"
        raise RunError(f"{source} has {tokens:,} token ids but {config.model}'s vocabulary holds {vocab:,}")


def _plan(config: RunConfig, *, world: int):
    """The plan every rank will build (expand, split, lower, verify), and the world size."""
    from ppc.exec.plan import build_order, build_plan

    order = build_order(config)
    expected = config.dp * order.ranks
    if world != expected:
        shape = f"schedule ranks {order.ranks}" if config.dp == 1 else f"dp {config.dp} x schedule ranks {order.ranks}"
        fix = f"pass --ranks {world}" if config.dp == 1 else "change --dp"
        raise RunError(f"world size {world} != {shape}: start {expected} processes "
                       f"(--nproc-per-node {expected}) or {fix}")
    plan = build_plan(config)
    log.info("preflight: %s ranks, %s stages compiled and verified", plan.program.ranks, plan.program.stages)
    return plan


def check_resume(config: RunConfig, plan) -> None:
    """--resume names a complete checkpoint (meta.json, intact safetensors files holding
    every parameter of this model in its shape) whose recorded trajectory is this run's;
    its schedule, ranks and split may differ, and so may --dp, --microbatches and
    --microbatch-size at the same global batch (exec/resume.py). Reads JSON headers only."""
    from ppc.exec.checkpoint import require_storage

    require_storage()
    root = Path(config.resume)
    if not root.is_dir():
        raise RunError(f"checkpoint directory not found: {config.resume}")
    step_dir = resolve(config.resume)
    saved = read_record(step_dir)
    current = run_meta(config, plan.program, plan.split)
    where = f"checkpoint {step_dir}"
    problem = mismatch(saved, current, where=where) or missing_weights(tensor_index(step_dir), _shapes(plan),
                                                                       where=where)
    if problem:
        raise RunError(problem)


def _shapes(plan) -> dict[str, tuple[int, ...]]:
    """Full name -> shape of every parameter of the plan's stages (modules on meta)."""
    shapes = {}
    for stage in plan.split.stages:
        for local, param in stage.module.named_parameters():
            shapes[stage.param_names.get(local, local)] = tuple(param.shape)
    return shapes

"""What a checkpoint records about its run, and the check that a resume reproduces it.

A resumed run continues the same trajectory only if everything that shapes the
trajectory is unchanged: the LR schedule (steps, warmup, lr, its floor), the optimizer
(weight decay, clipping), the batch (microbatches, their size, sequence length), the data
and its order (file, tokenizer, seed), the numerics (dtype) and the cut of the model
(schedule, ranks, stages, placement, split). `run_meta` lists them; `mismatch` names the
first one that differs. The launcher checks it before any worker starts (exec/preflight.py),
every rank again when it loads its state (exec/checkpoint.py). No torch here.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FLAGS", "META_FILE", "mismatch", "run_meta"]

META_FILE = "meta.json"
"""Written next to the rank files of a step directory; the launcher reads it."""

FLAGS = {
    "model": "--model", "schedule": "--schedule", "ranks": "--ranks", "dp": "--dp",
    "stages": "--virtual-stages",
    "placement": "--placement", "split": "--split", "split_sizes": "--split",
    "microbatches": "--microbatches", "microbatch_size": "--microbatch-size",
    "seq_len": "--seq-len", "steps": "--steps", "warmup": "--warmup", "lr": "--lr",
    "weight_decay": "--weight-decay", "clip": "--clip", "seed": "--seed", "data": "--data",
    "data_bytes": "--data", "tokenizer": "--tokenizer", "dtype": "--dtype",
}
"""The flag that sets each recorded field (for the message)."""


def run_meta(config, program, split) -> dict:
    """The settings of this run that a resume must reproduce (JSON-serializable)."""
    return {
        "model": config.model,
        "schedule": config.schedule,
        "ranks": program.ranks,
        "dp": config.dp,
        "stages": program.stages,
        "placement": list(program.placement),
        "split": config.split,
        "split_sizes": list(getattr(split, "sizes", ()) or ()),
        "microbatches": program.microbatches,
        "microbatch_size": config.microbatch_size,
        "seq_len": config.seq_len,
        "sequences_per_step": config.sequences_per_step,
        "steps": config.steps,
        "warmup": config.warmup,
        "lr": config.lr,
        "min_lr_ratio": config.min_lr_ratio,
        "weight_decay": config.weight_decay,
        "clip": config.clip or None,
        "seed": config.seed,
        "data": None if config.data is None else str(Path(config.data).resolve()),
        "data_bytes": None if config.data is None else _size(config.data),
        "tokenizer": None if config.tokenizer is None else str(Path(config.tokenizer).resolve()),
        "dtype": config.dtype,
    }


def mismatch(saved: dict, current: dict, *, where: str) -> str | None:
    """One line naming the first recorded field that differs, or None when all match.

    `saved` is the checkpoint's record (plus its "step" and "data_position" when known);
    a field it lacks was written by an older ppc and cannot be proven equal."""
    for key, value in current.items():
        if key not in saved:
            return f"{where} does not record {key} (written by an older ppc): cannot resume it exactly"
        if saved[key] != value:
            flag = FLAGS.get(key, key)
            return (f"{where} was written with {key}={saved[key]!r}, this run has {value!r}: "
                    f"resume with the same {flag} (or start a new run)")
    step, position = saved.get("step"), saved.get("data_position")
    if step is not None and position is not None and position != step * current["sequences_per_step"]:
        return f"{where} is at data position {position}, not step {step} x {current['sequences_per_step']} sequences"
    return None


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None

"""What a checkpoint records about its run, the check that a resume reproduces it, and the
checkpoint directory read without torch.

A resumed run continues the same trajectory only if everything that shapes the
trajectory is unchanged: the LR schedule (steps, warmup, lr, its floor), the optimizer
(weight decay, clipping), the global batch (sequences per step, sequence length), the
data and its order (file, tokenizer, seed) and the numerics (dtype). `run_meta` records
them and the layout of the run (schedule, ranks, stages, placement, split); `mismatch`
names the first trajectory field that differs. The layout may differ: weights and
optimizer state are keyed by full model parameter names (exec/checkpoint.py), so any
schedule, ranks count, virtual stages or split of the same model resumes them.

The cut of the global batch may differ too: replicas D, microbatches M and their size B,
as long as G = D x M x B is the same. Step t trains on sequences t x G .. (t + 1) x G - 1
of the seeded order whatever the cut (exec/data.py), every microbatch's loss is the mean
over its B x seq_len tokens, weighted 1 / M within a replica (exec/runtime.py) and 1 / D
across replicas (exec/dp.py): every token of the step weighs 1 / (G x seq_len), so the
gradient is the same up to floating-point summation order.
The launcher checks before any worker starts (exec/preflight.py), every rank again when
it loads its state.

Layout of a resumable checkpoint (written by exec/checkpoint.py):

    DIR/step-000012/meta.json           FORMAT, step, data position, run_meta
    DIR/step-000012/shard-*.safetensors weights and AdamW state, one file per writing rank
    DIR/latest                          name of the newest complete step directory

Everything here is JSON and safetensors headers (JSON too): nothing is unpickled. No torch.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from ppc.errors import RunError

__all__ = ["BATCH_CUT", "FLAGS", "FORMAT", "LAYOUT", "META_FILE", "OPTIM_PREFIX", "OPTIM_STATES", "mismatch",
           "missing_weights", "read_record", "resolve", "run_meta", "tensor_index"]

META_FILE = "meta.json"
"""Written next to the tensor files of a step directory; the launcher reads it."""

FORMAT = "ppc-dcp-safetensors-1"
"""meta.json's "format": torch.distributed.checkpoint with safetensors files, keyed by full
model parameter names. Checkpoints without it were written by an older ppc (pickles)."""

OPTIM_PREFIX = "optim.state."
"""AdamW state of parameter NAME is stored as `optim.state.NAME.exp_avg` (and so on), the
flattened form of torch.distributed.checkpoint.state_dict's optimizer state; weights are
stored under their bare full names."""

OPTIM_STATES = ("exp_avg", "exp_avg_sq", "step")
"""AdamW's per-parameter state (amsgrad off)."""

LAYOUT = ("schedule", "ranks", "stages", "placement", "split", "split_sizes")
"""Recorded, but free to differ on resume: they change how the model is cut and run, not
what it computes (pipeline schedules are exact)."""

BATCH_CUT = ("dp", "microbatches", "microbatch_size")
"""Recorded, and free to differ on resume when their product, the global batch
`sequences_per_step`, does not (the module docstring says why)."""

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
    """The settings of this run: its trajectory and its layout (JSON-serializable)."""
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
    """One line naming the first recorded trajectory field that differs, or None when all
    match (LAYOUT fields may differ, and BATCH_CUT fields when the global batch does not).

    `saved` is the checkpoint's record (plus its "step" and "data_position" when known);
    a field it lacks was written by an older ppc and cannot be proven equal."""
    for key, value in current.items():
        if key in LAYOUT or key in BATCH_CUT:
            continue
        if key not in saved:
            return f"{where} does not record {key} (written by an older ppc): cannot resume it exactly"
        if key == "sequences_per_step" and saved[key] != value:
            return (f"{where} was written with a global batch of {_batch(saved)}; this run has "
                    f"{_batch(current)}: resume with the same product --dp x --microbatches x "
                    f"--microbatch-size (or start a new run)")
        if saved[key] != value:
            flag = FLAGS.get(key, key)
            return (f"{where} was written with {key}={saved[key]!r}, this run has {value!r}: "
                    f"resume with the same {flag} (or start a new run)")
    step, position, per_step = saved.get("step"), saved.get("data_position"), current.get("sequences_per_step")
    if None not in (step, position, per_step) and position != step * per_step:
        return f"{where} is at data position {position}, not step {step} x {per_step} sequences"
    return None


def _batch(record: dict) -> str:
    """'8 sequences (dp 2 x microbatches 4 x microbatch-size 1)': a record's global batch
    and its cut (the cut left out when the record lacks a part of it)."""
    text = f"{record['sequences_per_step']} sequences"
    if all(key in record for key in BATCH_CUT):
        text += (f" (dp {record['dp']} x microbatches {record['microbatches']} x "
                 f"microbatch-size {record['microbatch_size']})")
    return text


def missing_weights(index: dict, shapes: dict[str, tuple[int, ...]], *, where: str) -> str | None:
    """One line naming the first parameter the checkpoint lacks or holds with another shape."""
    for name, shape in shapes.items():
        if name not in index:
            return (f"{where} holds no weight {name}: it is incomplete or was written for another model "
                    f"(it holds {sum(not k.startswith(OPTIM_PREFIX) for k in index)} weights)")
        if index[name][1] != shape:
            return f"{where} holds {name} with shape {list(index[name][1])}, this model's is {list(shape)}"
    return None


def resolve(directory: str | Path) -> Path:
    """The step directory to resume from: DIR/latest's target, or DIR itself when it holds a
    meta.json. A directory of per-rank pickles (rank-*.pt) is refused without reading them."""
    root = Path(directory)
    latest = root / "latest"
    step_dir = root / latest.read_text(errors="replace").strip() if latest.is_file() else root
    if any(step_dir.glob("rank-*.pt")):
        raise RunError(f"checkpoint {step_dir} was written by an older ppc: per-rank pickle files "
                       f"(rank-*.pt), which this ppc does not load (loading a pickle can run code); "
                       f"start a new run or finish this one with the ppc that wrote it")
    if step_dir == root and not (root / META_FILE).is_file():
        raise RunError(f"no checkpoint in {directory} (expected a 'latest' file or a step directory "
                       f"with {META_FILE})")
    if not step_dir.is_dir():
        raise RunError(f"checkpoint {step_dir} is missing ({latest} names it)")
    return step_dir


def read_record(step_dir: Path) -> dict:
    """meta.json of a step directory: the run's settings, step and data position."""
    from ppc.inputs import read_json

    path = step_dir / META_FILE
    if not path.is_file():
        raise RunError(f"checkpoint {step_dir} is incomplete or not a ppc checkpoint (no {META_FILE})")
    saved = read_json(path, error=RunError, what="checkpoint record")
    if not isinstance(saved, dict):
        raise RunError(f"{path}: not a checkpoint record (expected a JSON object)")
    if saved.get("format") != FORMAT:
        raise RunError(f"checkpoint {step_dir} was written by an older ppc or another tool "
                       f"(format {saved.get('format')!r}, expected {FORMAT!r}): start a new run")
    return saved


def tensor_index(step_dir: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor in the step directory's safetensors files,
    from their JSON headers; a truncated, foreign or duplicated file is one RunError."""
    files = sorted(step_dir.glob("*.safetensors"))
    if not files:
        raise RunError(f"checkpoint {step_dir} holds no tensor files (*.safetensors): incomplete")
    index: dict[str, tuple[str, tuple[int, ...]]] = {}
    for path in files:
        for name, (dtype, shape) in _header(path).items():
            if name in index:
                raise RunError(f"checkpoint {step_dir} holds {name} twice (a stray file such as {path.name}?)")
            index[name] = (dtype, shape)
    return index


def _header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A safetensors file's tensors: 8 bytes of header length, a JSON header, the data
    (whose end the header's offsets give: a shorter file is truncated)."""
    bad = f"checkpoint {path} is truncated or not a safetensors file"
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise RunError(bad)
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise RunError(bad)
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, ValueError):
            raise RunError(bad) from None
    if not isinstance(header, dict):
        raise RunError(bad)
    tensors, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            tensors[name] = (str(info["dtype"]), tuple(int(n) for n in info["shape"]))
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise RunError(bad) from None
    if size < 8 + length + end:
        raise RunError(f"checkpoint {path} is truncated ({size} bytes, its header describes {8 + length + end})")
    return tensors


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None

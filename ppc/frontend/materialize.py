"""From a model name to a split on the meta device, and from one stage to real weights.

`build_split` builds the model with parameters on the meta device (buffers such as
rotary tables are computed for real on the CPU: they are small), traces and splits it;
no real forward of the model ever runs. `materialize_stage` then gives one stage's
module with real weights - the same values `build_model(model, seed=seed)` gives - and
never allocates another stage's parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx

from ppc.errors import ModelError
from ppc.frontend import models
from ppc.frontend.split import SplitModel, split
from ppc.frontend.tracer import trace


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightSource:
    """How to give a stage of a split its real weights."""

    model: str
    """Preset name or local directory."""
    plan: dict[str, str]
    """Canonical parameter name -> init kind ("normal", "zeros", "ones")."""
    std: float
    buffers: dict[str, torch.Tensor]
    """Full-model buffer name -> its real CPU value (rotary inv_freq, ...)."""
    seed: int = 0


def build_split(
    model: str,
    *,
    stages: int,
    seq_len: int,
    microbatch_size: int,
    by: str | Sequence[int] = "cost",
    seed: int = 0,
) -> SplitModel:
    """Build `model` on the meta device, trace it with labels (loss in the graph) for
    microbatches of `microbatch_size` x `seq_len` tokens and split it into `stages`
    (`by`: a split method or the blocks of each stage, as for `split`)."""
    if seq_len < 2 or microbatch_size < 1:
        raise ModelError(
            f"need seq_len >= 2 and microbatch_size >= 1, got {seq_len} and {microbatch_size}"
        )
    skeleton = models.build_skeleton(model)
    limit = getattr(skeleton.config, "max_position_embeddings", None) or getattr(
        skeleton.config, "n_positions", None
    )
    if limit is not None and seq_len > limit:
        raise ModelError(f"seq_len {seq_len} exceeds the model's {limit} positions")
    source = WeightSource(
        model=model,
        plan=models.init_plan(skeleton),
        std=models.initializer_range(skeleton),
        buffers={name: buf.detach().clone() for name, buf in skeleton.named_buffers()},
        seed=seed,
    )
    tokens = torch.zeros((microbatch_size, seq_len), dtype=torch.long, device="meta")
    gm = trace(skeleton, {"input_ids": tokens, "labels": tokens})
    result = split(gm, stages, by=by)
    result.extras["source"] = source
    return result


def materialize_stage(
    split_model: SplitModel,
    stage: int,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    weights_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Stage `stage` of `split_model` with real weights on `device`.

    Parameters come from `weights_dir`'s safetensors files when given (only this stage's
    tensors are read), else from the model directory's weights, else from the
    deterministic init of `seed`. A split of a real (non-meta) model keeps its weights.
    """
    if not 0 <= stage < len(split_model.stages):
        raise ModelError(f"stage {stage} out of range 0..{len(split_model.stages) - 1}")
    info = split_model.stages[stage]
    source: WeightSource | None = split_model.extras.get("source")
    module: fx.GraphModule = copy.deepcopy(info.module)
    if source is None and not _on_meta(module):
        return module.to(device=device, dtype=dtype)
    module.to_empty(device=device)
    for local, param in module.named_parameters(remove_duplicate=False):
        param.data = param.data.to(dtype)
        canonical = info.param_names[local]
        kind = source.plan.get(canonical, "normal") if source else "normal"
        std = source.std if source else models.INITIALIZER_RANGE
        models.fill(param, models.initial_value(canonical, tuple(param.shape), kind,
                                                seed=seed, std=std))
    _restore_buffers(module, source, device)
    directory = Path(weights_dir) if weights_dir else (
        models.weights_dir(source.model) if source else None
    )
    if directory is not None:
        models.load_weights(module, directory, info.param_names)
    return module


def _on_meta(module: torch.nn.Module) -> bool:
    return any(p.device.type == "meta" for p in module.parameters())


def _restore_buffers(module: fx.GraphModule, source: WeightSource | None, device) -> None:
    for name, buf in module.named_buffers():
        value = source.buffers.get(name) if source else None
        if value is None:
            raise ModelError(
                f"buffer {name!r} of the stage has no real value to restore; build the split "
                "with build_split or from a model with real weights"
            )
        buf.data = value.to(device)

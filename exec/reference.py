"""The reference: the same model, data and optimizer in a plain single-process loop.

`ppc run --reference` uses it to check that the pipeline computes what single-device
training computes; the benchmark uses it as the baseline. With `config.dp` = D it is the
twin of D pipeline replicas: every step runs the whole global batch, D x M microbatches in
the order exec/data.py gives, each weighted 1 / (D x M).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from ppc.exec.config import RunConfig
from ppc.exec.data import load_data, load_tokenizer
from ppc.exec.metrics import MetricsWriter, StepMetrics
from ppc.exec.optim import clip_by_norm, lr_at, make_adamw, squared_norm

__all__ = ["hf_loss", "train_reference"]


def hf_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token loss of a Hugging Face causal LM (it shifts the labels itself)."""
    return model(input_ids=batch["input_ids"], labels=batch["labels"]).loss


def train_reference(
    config: RunConfig,
    *,
    device: torch.device,
    model: torch.nn.Module | None = None,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] = hf_loss,
    on_metrics: Callable[[StepMetrics], None] | None = None,
    steps: int | None = None,
) -> tuple[torch.nn.Module, list[StepMetrics]]:
    """Train `model` (default: build_model(config.model, seed)) and return it with its history."""
    if model is None:
        from ppc.frontend import build_model

        model = build_model(config.model, device="cpu", seed=config.seed)
    model = model.to(device)
    model.train()
    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adamw(params, lr=config.lr, weight_decay=config.weight_decay)
    data = load_data(
        config.data, tokenizer=load_tokenizer(config.tokenizer), seq_len=config.seq_len, seed=config.seed,
        column=config.data_column, cache_dir=config.data_cache,
    )
    autocast = torch.bfloat16 if config.dtype == "bf16" and device.type == "cuda" else None
    writer = MetricsWriter(config.metrics) if config.metrics else None
    history = []
    total = config.microbatches * config.dp  # microbatches of the global batch
    for step in range(steps if steps is not None else config.steps):
        lr = lr_at(step, lr=config.lr, warmup=config.warmup, steps=config.steps, min_ratio=config.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = data.microbatches(step, microbatches=total, microbatch_size=config.microbatch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        losses = []
        for micro in batch:
            micro = {k: v.to(device) for k, v in micro.items()}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                loss = loss_fn(model, micro)
            torch.autograd.backward(loss, torch.full_like(loss, 1.0 / total))
            losses.append(loss.detach())
        norm = clip_by_norm(params, squared_norm(params), config.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - began
        record = StepMetrics(
            step=step + 1,
            steps=config.steps,
            loss=sum(float(x) for x in losses) / len(losses),
            lr=lr,
            step_time_s=elapsed,
            tokens_per_s=config.tokens_per_step / elapsed,
            grad_norm=norm,
        )
        history.append(record)
        if writer is not None:
            writer.write(record)
        if on_metrics is not None:
            on_metrics(record)
    if writer is not None:
        writer.close()
    return model, history

"""One-device benchmark: the ppc executor against a plain PyTorch loop, in one process.

World size 1 with S stages on the single rank, so the program has no communication and
stage hand-offs are direct. Both sides train the same model on the same microbatches
with the same optimizer; the JSON report gives tokens/s, peak memory and the loss
difference. On a GPU (defaults): NCCL, llama-3.2-1b, 4 stages, bf16, seq-len 1024,
microbatch size 1, 8 microbatches.

    python -m ppc.exec.benchmark --out bench.json
    python -m ppc.exec.benchmark --model tiny-llama --device cpu --seq-len 32 --steps 3 --out b.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from ppc.exec.config import RunConfig
from ppc.exec.plan import build_plan
from ppc.exec.reference import train_reference
from ppc.exec.train import train_pipeline

__all__ = ["main", "run_benchmark"]


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _throughput(history, skip: int) -> float:
    times = [r.step_time_s for r in history[skip:]] or [r.step_time_s for r in history]
    return history[0].tokens_per_s * history[0].step_time_s / statistics.median(times)


def run_benchmark(config: RunConfig, *, skip: int = 2) -> dict:
    """Train `config.steps` steps with ppc, then with the plain loop; returns the report."""
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    plan = build_plan(config)
    comm = sum(i.op.is_comm for row in plan.program.instructions for i in row)
    _peak_reset(device)
    ppc = train_pipeline(config, plan, device=device)
    ppc_peak = _peak(device)
    ppc.modules.clear()
    ppc.runtime = None
    _peak_reset(device)
    _, plain = train_reference(config, device=device)
    plain_peak = _peak(device)
    ppc_losses = [r.loss for r in ppc.history]
    plain_losses = [r.loss for r in plain]
    ppc_tps, plain_tps = _throughput(ppc.history, skip), _throughput(plain, skip)
    return {
        "model": config.model,
        "schedule": config.schedule,
        "stages": plan.program.stages,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backend": dist.get_backend(),
        "dtype": config.dtype,
        "seq_len": config.seq_len,
        "microbatch_size": config.microbatch_size,
        "microbatches": config.microbatches,
        "steps": config.steps,
        "comm_instructions": comm,
        "ppc": {"tokens_per_s": ppc_tps, "peak_bytes": ppc_peak, "losses": ppc_losses},
        "plain": {"tokens_per_s": plain_tps, "peak_bytes": plain_peak, "losses": plain_losses},
        "throughput_ratio": ppc_tps / plain_tps,
        "max_loss_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(ppc_losses, plain_losses)),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ppc.exec.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="llama-3.2-1b")
    p.add_argument("--schedule", default="interleaved_1f1b")
    p.add_argument("--stages", type=int, default=4, help="stages on the single rank (V)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default=None)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--microbatch-size", type=int, default=1)
    p.add_argument("--microbatches", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--skip", type=int, default=2, help="warm-up steps left out of tokens/s")
    p.add_argument("--out", required=True, help="write the JSON report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = RunConfig(
        model=args.model, schedule=args.schedule, ranks=1, virtual=args.stages,
        microbatches=args.microbatches, microbatch_size=args.microbatch_size,
        seq_len=args.seq_len, steps=args.steps, warmup=2, device=device,
        dtype=args.dtype or ("bf16" if device == "cuda" else "fp32"),
    )
    config = dataclasses.replace(config, device=f"cuda:{torch.cuda.current_device()}" if device == "cuda" else "cpu")
    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    try:
        report = run_benchmark(config, skip=args.skip)
    finally:
        dist.destroy_process_group()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("throughput_ratio", "max_loss_rel_diff")}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

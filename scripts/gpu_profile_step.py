"""Where a GPU step goes: torch.profiler over a short ppc run and the plain loop.

    python scripts/gpu_profile_step.py OUT_DIR   (NCCL, world size 1, llama-3.2-1b, 4 stages)
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from ppc.exec.config import RunConfig
from ppc.exec.plan import build_plan
from ppc.exec.reference import train_reference
from ppc.exec.train import train_pipeline
from torch.profiler import ProfilerActivity, profile


def main(out: Path) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29577")
    dist.init_process_group("nccl", rank=0, world_size=1)
    device = torch.device("cuda:0")
    torch.cuda.set_device(device)
    config = RunConfig(
        model="llama-3.2-1b", schedule="interleaved_1f1b", ranks=1, virtual=4, microbatches=8,
        microbatch_size=1, seq_len=1024, steps=3, warmup=1, device="cuda:0", dtype="bf16",
    )
    plan = build_plan(config)
    for name, run in (
        ("ppc", lambda: train_pipeline(config, plan, device=device)),
        ("plain", lambda: train_reference(config, device=device)),
    ):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run()
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)
        cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
        (out / f"profile_{name}.txt").write_text(table + "\n\n" + cpu)
        torch.cuda.empty_cache()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

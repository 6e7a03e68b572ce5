"""torch's pipeline runtime as a second back end for a ppc schedule.

A schedule ppc compiled (`ppc compile SCHEDULE --format csv`: the compute-only CSV,
one row of `2F0`, `1I3`, ... per rank) runs on torch.distributed.pipelining's
`_PipelineScheduleRuntime`, which adds its own sends and receives. The model is ppc's
split (ppc.frontend.build_split, weights as `ppc run` initialises them), each stage
wrapped as a torch `PipelineStage`; data, learning rate, clipping and AdamW are `ppc
run`'s, so the losses equal `ppc run --reference` on the same flags.

torch's stages form a chain (stage s reads what stage s - 1 returns), while ppc sends
a value straight from its producer to each consumer. `ChainStage` bridges the two:
every stage returns, besides its own outputs, the values later stages still need
(batch inputs such as the labels included), so they are relayed hop by hop.

Run it under torchrun, one process per pipeline rank::

    ppc compile zb_h1 -r 4 -m 8 --format csv > zb_h1.csv
    torchrun --nproc-per-node 4 -m ppc.measure.torch_runtime --csv zb_h1.csv \\
        --model tiny-llama --microbatches 8 --steps 20 --metrics torch_runtime.jsonl
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ppc.errors import PpcError
from ppc.exec.config import RunConfig
from ppc.exec.metrics import MetricsWriter, StepMetrics

__all__ = ["ChainStage", "chain_stages", "train_with_torch_runtime"]

log = logging.getLogger(__name__)


class ChainStage(nn.Module):
    """One ppc stage as a link of torch's chain: it reads the values `takes` names (in that
    order), runs the stage on the ones it uses, and returns the values `gives` names."""

    def __init__(self, module: nn.Module, *, inputs: Sequence[str], outputs: Sequence[str],
                 takes: Sequence[str], gives: Sequence[str]):
        super().__init__()
        self.stage = module
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.takes, self.gives = tuple(takes), tuple(gives)

    def forward(self, *values: torch.Tensor):
        env = dict(zip(self.takes, values))
        produced = self.stage(*(env[name] for name in self.inputs))
        env.update(zip(self.outputs, produced if isinstance(produced, tuple) else (produced,)))
        result = tuple(env[name] for name in self.gives)
        return result[0] if len(result) == 1 else result


def chain_stages(split_model) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per stage, (takes, gives): what it receives from the previous stage (the batch
    inputs for stage 0) and what it returns (the loss for the last stage)."""
    stages = split_model.stages
    consumers: dict[str, int] = {}
    for stage in stages:
        for name in stage.inputs:
            consumers[name] = max(consumers.get(name, -1), stage.index)
    out, takes = [], tuple(split_model.batch_inputs)
    for stage in stages:
        if stage.index == len(stages) - 1:
            gives = (split_model.loss_name,)
        else:
            alive = list(dict.fromkeys([*takes, *stage.outputs]))
            gives = tuple(name for name in alive if consumers.get(name, -1) > stage.index)
        out.append((takes, gives))
        takes = gives
    return out


def _examples(split_model, names: Sequence[str], config: RunConfig) -> tuple[torch.Tensor, ...]:
    """Example tensors of one microbatch for `names` (from the split's compile-time
    specs), so torch's stages know their messages without a trial forward (ppc's
    principle: one message per tensor, known in advance)."""
    specs = {v.name: v.spec for v in split_model.graph.values if v.spec is not None}
    out = []
    for name in names:
        if name == split_model.loss_name:
            out.append(torch.zeros((), requires_grad=True))
        elif name in split_model.batch_inputs:
            out.append(torch.zeros((config.microbatch_size, config.seq_len), dtype=torch.long))
        else:
            spec = specs[name]
            dtype = getattr(torch, spec.dtype)
            out.append(torch.zeros(spec.shape, dtype=dtype, requires_grad=dtype.is_floating_point))
    return tuple(out)


def _loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The last stage already returns the microbatch's mean token loss."""
    return output


def _csv_rows(path: str | Path) -> list[list[str]]:
    with open(path, newline="") as file:
        return [row for row in csv.reader(file) if row]


def _stages_of_rank(rows: list[list[str]], rank: int) -> list[int]:
    """The stages rank `rank` computes in the CSV (its row's actions, e.g. `2F0`)."""
    from ppc.ir.program import Instruction

    stages = []
    for cell in rows[rank]:
        cell = cell.strip()
        if cell and not cell.startswith("("):
            stage = Instruction.parse(cell).stage
            if stage not in stages:
                stages.append(stage)
    return sorted(stages)


def train_with_torch_runtime(config: RunConfig, csv_path: str | Path, *, rank: int, world: int) -> list[float]:
    """Train `config`'s model with the compute-only schedule in `csv_path` on torch's
    runtime, this process being pipeline rank `rank` of `world` (a joined process
    group); returns the step losses (on the rank that holds the last stage; else [])."""
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import _PipelineScheduleRuntime

    from ppc.exec.config import parse_split
    from ppc.exec.data import load_data, load_tokenizer
    from ppc.exec.mesh import build_mesh
    from ppc.exec.optim import lr_at, make_adamw
    from ppc.exec.stepping import optimizer_step
    from ppc.exec.tied import TiedReducer
    from ppc.frontend import build_split
    from ppc.frontend.materialize import materialize_stage

    rows = _csv_rows(csv_path)
    if len(rows) != world:
        raise PpcError(f"{csv_path}: {len(rows)} ranks in the schedule, {world} processes")
    owner = {s: r for r in range(world) for s in _stages_of_rank(rows, r)}
    mine = _stages_of_rank(rows, rank)
    num_stages = 1 + max(owner, default=-1)
    split_model = build_split(config.model, stages=num_stages, seq_len=config.seq_len,
                              microbatch_size=config.microbatch_size, by=parse_split(config.split), seed=config.seed)
    links = chain_stages(split_model)
    device = torch.device("cpu")
    modules = {s: materialize_stage(split_model, s, device=device, seed=config.seed) for s in mine}
    # tied weights (an embedding the head reuses): one parameter per rank, gradients summed
    # over the ranks that hold it before the step, as ppc's own runtime does
    placement = [owner[s] for s in range(num_stages)]
    tied = TiedReducer(graph=split_model.graph, stages=split_model.stages, placement=placement, rank=rank,
                       modules=modules, mesh=build_mesh(dp=1, pp=world, device_type="cpu"))
    params = list(dict.fromkeys(p for m in modules.values() for p in m.parameters() if p.requires_grad))
    stages = []
    for s in mine:
        info = split_model.stages[s]
        takes, gives = links[s]
        link = ChainStage(modules[s], inputs=info.inputs, outputs=info.outputs, takes=takes, gives=gives)
        stages.append(PipelineStage(link, s, num_stages, device, input_args=_examples(split_model, takes, config),
                                    output_args=_examples(split_model, gives, config)))
    schedule = _PipelineScheduleRuntime(stages, n_microbatches=config.microbatches, loss_fn=_loss)
    schedule._load_csv(str(csv_path), format="compute_only")
    optimizer = make_adamw(params, lr=config.lr, weight_decay=config.weight_decay)
    data = load_data(config.data, tokenizer=load_tokenizer(config.tokenizer), seq_len=config.seq_len,
                     seed=config.seed)
    first, last = 0 in mine, num_stages - 1 in mine
    writer = MetricsWriter(config.metrics) if config.metrics and last else None
    history = []
    for step in range(config.steps):
        lr = lr_at(step, lr=config.lr, warmup=config.warmup, steps=config.steps, min_ratio=config.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = data.microbatches(step, microbatches=config.microbatches, microbatch_size=config.microbatch_size)
        whole = {key: torch.cat([micro[key] for micro in batch]) for key in split_model.batch_inputs}
        losses: list[torch.Tensor] = []
        began = time.perf_counter()
        args = tuple(whole[key] for key in split_model.batch_inputs) if first else ()
        schedule.step(*args, target=whole["labels"] if last else None, losses=losses, return_outputs=False)
        norm = optimizer_step(params=params, tied=tied, optimizer=optimizer, clip=config.clip, group=None,
                              device=device)
        elapsed = time.perf_counter() - began
        if last:
            loss = sum(float(x) for x in losses) / len(losses)
            history.append(loss)
            log.info("step %d loss %.6f grad norm %.4f", step + 1, loss, norm)
            if writer is not None:
                writer.write(StepMetrics(step=step + 1, steps=config.steps, loss=loss, lr=lr, step_time_s=elapsed,
                                         tokens_per_s=config.tokens_per_step / elapsed, grad_norm=norm))
    if writer is not None:
        writer.close()
    return history


def main(argv: Sequence[str] | None = None) -> int:
    """`torchrun --nproc-per-node R -m ppc.measure.torch_runtime --csv FILE ...`."""
    parser = argparse.ArgumentParser(prog="python -m ppc.measure.torch_runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True, help="compute-only CSV (`ppc compile ... --format csv`)")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--split", default="cost", help="cost | layers | params, or blocks per stage")
    parser.add_argument("-m", "--microbatches", type=int, default=8)
    parser.add_argument("--microbatch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--metrics", default=None, help="one JSON object per step (written by the last stage)")
    args = parser.parse_args(argv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    config = RunConfig(model=args.model, split=args.split, ranks=world, microbatches=args.microbatches,
                       microbatch_size=args.microbatch_size, seq_len=args.seq_len, steps=args.steps, lr=args.lr,
                       warmup=args.warmup, seed=args.seed, data=args.data, tokenizer=args.tokenizer,
                       metrics=args.metrics)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=config.timeout))
    try:
        train_with_torch_runtime(config, args.csv, rank=rank, world=world)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

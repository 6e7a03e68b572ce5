"""`ppc run`: train a model with a pipeline schedule (or the single-process reference).

Under torchrun each process is one rank. Outside torchrun the command checks its input,
then starts one worker per rank itself (`--nproc-per-node`, default: D x R, the replicas
times the schedule's ranks). torch is imported only inside the functions.
"""

from __future__ import annotations

import argparse
import os
import sys

from ppc.cli.options import add_microbatches, add_ranks, add_virtual
from ppc.errors import PpcError

_PARSER: argparse.ArgumentParser | None = None
FAULT_ENV = "PPC_FAULT_AT"
"""Test hook: "RANK:STEP:INSTRUCTION" makes that rank raise when it reaches that point."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    global _PARSER
    p = subparsers.add_parser(
        "run",
        help="train with a pipeline schedule (torch.distributed; NCCL on GPU, gloo on CPU)",
        description="Train a model with a pipeline schedule. Under torchrun each process is "
        "one rank; otherwise ppc starts --nproc-per-node workers itself.",
    )
    g = p.add_argument_group("model and schedule")
    g.add_argument("--model", default="tiny-llama", help="preset name or local HF directory")
    g.add_argument("--schedule", default="1f1b",
                   help="built-in name, .ppc file, torch .csv, or a program .json from `ppc compile --model`")
    g.add_argument("--allow-missing-keys", action="store_true",
                   help="train although --model DIR's weights lack some parameters (they start random)")
    g.add_argument("--allow-unexpected-keys", action="store_true",
                   help="train although --model DIR's weights hold tensors the model does not have")
    add_ranks(g, default=4, help="pipeline ranks R (world size = D x R)")
    add_virtual(g)
    g.add_argument("--placement", choices=("loop", "v"), help="override the schedule's placement")
    g.add_argument("--split", default="cost", metavar="cost|layers|params|N,N,..",
                   help="how to cut the model into stages: balance estimated FLOPs (cost), blocks "
                   "(layers) or parameters (params), or give the blocks of each stage (3,2,2,1)")
    g = p.add_argument_group("data and batch")
    g.add_argument("--data", help=".txt, .jsonl, .parquet, .arrow file or Hugging Face datasets "
                   "directory (its \"train\" split); default: Python's docs")
    g.add_argument("--data-column", default="text", metavar="NAME",
                   help="the field (.jsonl) or column (.parquet, .arrow, datasets) holding the text")
    g.add_argument("--data-cache", metavar="DIR",
                   help="token cache folder (default: $PPC_CACHE, else ~/.cache/ppc)")
    g.add_argument("--tokenizer", help="local Hugging Face tokenizer directory (default: bytes)")
    g.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    add_microbatches(g, default=8)
    g.add_argument("--microbatch-size", type=int, default=1, help="sequences per microbatch")
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=20, help="optimizer steps (the LR schedule spans them)")
    g.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW)")
    g.add_argument("--warmup", type=int, default=2, help="linear LR warm-up steps, then cosine")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    g.add_argument("--clip", type=float, default=1.0, help="max global grad norm (0: off)")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order")
    g.add_argument("--allow-nonfinite", action="store_true",
                   help="train on through a nan/inf loss or gradient norm (default: stop the run)")
    g = p.add_argument_group("devices and processes")
    g.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    g.add_argument("--dtype", choices=("fp32", "bf16"), help="default: bf16 on cuda, fp32 on cpu")
    g.add_argument("--dp", type=int, metavar="D",
                   help="pipeline replicas D, each on its own shard of the global batch, gradients "
                   "averaged (default: 1; under torchrun: world size / R)")
    g.add_argument("--zero", type=int, choices=(0, 1), default=0,
                   help="1: shard AdamW state over the D replicas (ZeRO-1)")
    g.add_argument("--nproc-per-node", type=int, help="start this many workers (outside torchrun; default D x R)")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds before a stuck op fails")
    g.add_argument("--reference", action="store_true", help="plain single-process loop instead")
    g = p.add_argument_group("outputs")
    g.add_argument("--metrics", help="write one JSON object per step to this .jsonl file")
    g.add_argument("--save", help="write a merged Hugging Face checkpoint to this directory")
    g.add_argument("--checkpoint-every", type=int, default=0, help="save resumable state every N steps")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="where --checkpoint-every writes")
    g.add_argument("--resume", help="resume from a checkpoint directory")
    g.add_argument("--trace", help="write each rank's executed instructions as a Chrome trace")
    g.add_argument("--quiet", action="store_true", help="no per-step lines or progress bar")
    _PARSER = p
    return p


def _config(args):
    from ppc.exec.config import RunConfig

    device = args.device or _default_device()
    return RunConfig(
        model=args.model, allow_missing_keys=args.allow_missing_keys,
        allow_unexpected_keys=args.allow_unexpected_keys, schedule=args.schedule, ranks=args.ranks,
        virtual=args.virtual, dp=_replicas(args), zero=args.zero, placement=args.placement, split=args.split,
        microbatches=args.microbatches,
        microbatch_size=args.microbatch_size, seq_len=args.seq_len, steps=args.steps, lr=args.lr,
        warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip or None, seed=args.seed,
        data=args.data, data_column=args.data_column, data_cache=args.data_cache,
        tokenizer=args.tokenizer, device=device,
        dtype=args.dtype or ("bf16" if device == "cuda" else "fp32"), metrics=args.metrics,
        save=args.save, checkpoint_every=args.checkpoint_every, checkpoint_dir=args.checkpoint_dir,
        resume=args.resume, trace=args.trace, timeout=args.timeout,
        allow_nonfinite=args.allow_nonfinite,
    )


def _replicas(args) -> int:
    """--dp, or under torchrun (when not given) the world size over the pipeline ranks."""
    if args.dp is not None:
        return args.dp
    from ppc.exec import launch

    if launch.under_torchrun() and not args.reference:
        world = int(os.environ["WORLD_SIZE"])
        if args.ranks and world % args.ranks == 0:
            return world // args.ranks
    return 1


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args) -> int:
    from ppc.exec import launch, signals

    if launch.under_torchrun():
        signals.guard_worker()  # die with the launcher; SIGINT/SIGTERM end it quietly
    else:
        signals.interrupt_on_sigterm()
    config = _config(args)
    if args.reference:
        return _run_reference(config, args)
    if launch.under_torchrun():
        return _run_worker(config, args)
    nproc = args.nproc_per_node or config.dp * config.ranks
    _check_inputs(config, world=nproc)
    fork = _forked_worker if config.device == "cpu" else None
    code, message = launch.self_launch(_argv(args), nproc=nproc, fork=fork)
    if code:
        print(f"ppc: run failed: {message}", file=sys.stderr)
    return code


def _check_inputs(config, *, world: int) -> None:
    """Everything a user can get wrong, before any process starts (exec/preflight.py)."""
    from ppc.exec.preflight import preflight

    preflight(config, world=world)


def _argv(args) -> list[str]:
    """The command line that re-creates `args` in a worker (without --nproc-per-node)."""
    argv = ["run"]
    for action in _PARSER._actions:
        if not action.option_strings or action.dest in ("help", "nproc_per_node"):
            continue
        value = getattr(args, action.dest, None)
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                argv.append(flag)
        elif value is not None and value != action.default:
            argv += [flag, str(value)]
    if getattr(args, "verbose", False):
        argv.insert(0, "-v")
    return argv


def _run_worker(config, args) -> int:
    import torch.distributed as dist

    from ppc.exec import launch
    from ppc.exec.signals import exit_worker
    from ppc.exec.worker import start_worker

    rank = int(os.environ["RANK"])
    board = launch.StatusBoard(os.environ.get(launch.STATUS_ENV), rank)
    fault = os.environ.get(FAULT_ENV)
    try:
        with _reporter(args, config) as reporter:
            code = start_worker(config, board=board, on_metrics=reporter.step, fault=fault)
    except PpcError as error:
        board.fail(f"rank {rank}: {error}")
        raise
    except BaseException as error:  # noqa: BLE001  any failure on a rank: name it, exit at once
        message = f"rank {rank} failed {board.where()}: {type(error).__name__}: {error}"
        board.fail(message)
        print(f"ppc: {message}", file=sys.stderr, flush=True)
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    exit_worker(code)


def _forked_worker(argv: list[str]) -> int:
    """A worker forked from the launcher (exec/launch.py self_launch): the CLI once more,
    in a process that already holds torch, the model's code and the preflight's plan.
    It never returns (the worker ends with os._exit); returns the exit code otherwise."""
    from ppc.cli import main

    try:
        main(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0


def _run_reference(config, args) -> int:
    import torch

    from ppc.host import threads_per_rank

    torch.set_num_threads(threads_per_rank(1))  # the cores this process may use, as ranks do
    from ppc.exec.checkpoint import write_hf
    from ppc.exec.reference import train_reference

    _check_inputs(config, world=config.dp * config.ranks)
    with _reporter(args, config) as reporter:
        model, _ = train_reference(config, device=torch.device(config.device), on_metrics=reporter.step)
    if config.save:
        from pathlib import Path

        named = {n: p.detach().float().cpu() for n, p in model.state_dict().items()}
        write_hf(Path(config.save), model=config.model, weights=named, tokenizer=config.tokenizer)
    return 0


def _reporter(args, config):
    return StepReporter(total=config.steps, quiet=args.quiet)


class StepReporter:
    """Prints the per-step line and drives a rich progress bar; starts on the first step,
    so only the rank that computes the loss shows anything."""

    def __init__(self, *, total: int, quiet: bool = False):
        self.total, self.quiet = total, quiet
        self._progress = None
        self._task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def step(self, record) -> None:
        if self.quiet:
            return
        if self._progress is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            from ppc.cli.console import make_console

            console = make_console(highlight=False)
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(), console=console, transient=True,
            )
            self._task = self._progress.add_task("train", total=self.total, completed=record.step - 1)
            self._progress.start()
        self._progress.console.print(record.line(), markup=False)
        self._progress.update(self._task, completed=record.step)

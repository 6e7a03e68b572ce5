"""`ppc inspect`: show how a model splits into pipeline stages (layers, parameters,
estimated FLOPs, values received and sent) and the cost balance of the split."""

from __future__ import annotations

import argparse
import time

from rich.table import Table

from ppc.cli.console import make_console


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "inspect", help="show a model's split into pipeline stages", description=__doc__
    )
    parser.add_argument("--model", required=True,
                        help="preset (tiny-llama, llama-3.2-1b, ...) or local HF directory")
    parser.add_argument("--stages", type=int, required=True, help="number of stages S")
    parser.add_argument("--split", "--by", dest="by", choices=("cost", "layers", "params"), default="cost",
                        help="what the split balances (default: estimated FLOPs)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--microbatch-size", type=int, default=1, help="sequences per microbatch")
    return parser


def run(args: argparse.Namespace) -> int:
    from ppc.frontend import build_split
    from ppc.frontend.split import balance, equal_layers, stage_costs

    console = make_console()
    start = time.perf_counter()
    split = build_split(args.model, stages=args.stages, seq_len=args.seq_len,
                        microbatch_size=args.microbatch_size, by=args.by)
    elapsed = time.perf_counter() - start
    console.print(_stage_table(split, args))
    for line in _recomputed_lines(split):
        console.print(line)
    if split.graph.tied:
        for tied in split.graph.tied:
            stages = ", ".join(str(s) for s in tied.stages)
            console.print(f"tied weight {tied.name}: held by stages {stages}; "
                          "gradients summed before the optimizer step")
    chosen = balance(stage_costs(split))
    reference = balance(equal_layers(split))
    console.print(
        f"cost balance (max/mean estimated FLOPs per stage): by={args.by} {chosen:.3f}, "
        f"equal layers {reference:.3f}"
    )
    console.print(f"traced and split in {elapsed:.1f} s", style="dim")
    return 0


def _stage_table(split, args) -> Table:
    table = Table(title=f"{args.model}: {args.stages} stages by {args.by} "
                        f"(microbatch {args.microbatch_size} x {args.seq_len} tokens)")
    for column in ("stage", "layers", "params", "GFLOPs", "act MiB", "receives", "sends"):
        numeric = column in ("params", "GFLOPs", "act MiB")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for stage in split.stages:
        received = [v for v in split.graph.inputs_of(stage.index) if not v.recompute]
        sent = [v for v in split.graph.outputs_of(stage.index) if not v.recompute]
        table.add_row(
            str(stage.index),
            _layers(stage.layers),
            f"{stage.params / 1e6:,.1f}M",
            f"{stage.flops / 1e9:,.1f}",
            f"{stage.activation_bytes / 2**20:,.1f}",
            "\n".join(_source(v) for v in received) or "-",
            "\n".join(f"{v.name} -> {','.join(map(str, v.consumers))}" for v in sent) or "-",
        )
    return table


def _recomputed_lines(split) -> list[str]:
    return [
        f"recomputed on stages {','.join(map(str, v.consumers))} (not sent): {v.name}"
        for v in split.graph.values if v.recompute
    ]


def _source(value) -> str:
    return f"{value.name} (batch)" if value.producer < 0 else f"{value.name} <- {value.producer}"


def _layers(names: tuple[str, ...]) -> str:
    if not names:
        return "-"
    if len(names) == 1:
        return names[0]
    prefix, _, first = names[0].rpartition(".")
    last = names[-1].rpartition(".")[2]
    return f"{prefix}.{first}-{last}" if prefix else f"{first}-{last}"

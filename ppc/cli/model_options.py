"""`--model` for compile and simulate: lower against a real model's stage graph.

torch is imported only when --model is given, so both commands stay torch-free otherwise.
"""

from __future__ import annotations

import argparse

from ppc.costs import CostModel
from ppc.ir.order import ComputeOrder


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (optional; imports torch)")
    group.add_argument("--model", help="preset (tiny-llama, llama-3.2-1b, ...) or local HF directory")
    group.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    group.add_argument("--microbatch-size", type=int, default=1, help="sequences per microbatch")
    group.add_argument(
        "--split", default="cost", help="cost | layers | params, or blocks per stage (3,2,2,1)"
    )


def build_model_split(args: argparse.Namespace, order: ComputeOrder):
    """The model traced and split into the order's stages (a ppc.frontend.SplitModel)."""
    from ppc.exec.config import parse_split
    from ppc.frontend import build_split

    return build_split(
        args.model,
        stages=order.stages,
        seq_len=args.seq_len,
        microbatch_size=args.microbatch_size,
        by=parse_split(args.split),
    )


def flop_costs(split) -> CostModel:
    """Costs from estimated FLOPs: the mean stage's F is 1 unit, I = W = F (so B = 2F)."""
    flops = [max(stage.flops, 1) for stage in split.stages]
    mean = sum(flops) / len(flops)
    forward = tuple(f / mean for f in flops)
    return CostModel(
        forward=forward,
        backward_input=forward,
        backward_weight=forward,
        activation_bytes=tuple(split.graph.activation_bytes),
    )

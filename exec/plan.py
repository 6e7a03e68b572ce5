"""What every rank agrees on before training: the program, the split model, and how to
materialize one stage. Built from the real language, compiler and frontend."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from ppc.exec.config import RunConfig

from ppc.errors import RunError
from ppc.ir.program import Program

__all__ = ["Plan", "build_order", "build_plan", "check_model"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    program: Program
    split: object
    """A ppc.frontend.SplitModel (or the same shape): graph, stages, batch_inputs, loss_name."""
    materialize: Callable[[int, torch.device], torch.nn.Module]
    """Real-weight module of one stage on a device; only that stage's weights."""
    model: str
    """Preset or directory, for the merged Hugging Face checkpoint."""


def build_order(config: RunConfig):
    """The schedule expanded for R, M, V (a compiled program's own compute order); raises
    ScheduleError / ConstraintError."""
    from ppc.exec.program_file import compute_order, is_program_file, load_for_run

    from ppc.lang import load_schedule

    if is_program_file(config.schedule):
        return compute_order(load_for_run(config)[0])

    schedule = load_schedule(config.schedule)
    return schedule.expand(
        ranks=config.ranks,
        microbatches=config.microbatches,
        virtual=config.virtual,
        placement=config.placement,
    )


def check_model(config: RunConfig) -> None:
    """Fail early on an unknown model or a sequence length beyond the model's limit."""
    from ppc.frontend import build_model
    from ppc.frontend.models import check_checkpoint

    model = build_model(config.model, device="meta", seed=config.seed)
    check_checkpoint(config.model, allow_missing=config.allow_missing_keys,
                     allow_unexpected=config.allow_unexpected_keys, skeleton=model)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and config.seq_len > limit:
        raise RunError(f"--seq-len {config.seq_len} exceeds {config.model}'s limit of {limit} positions")


@functools.lru_cache(maxsize=4)
def _split(model: str, stages: int, seq_len: int, microbatch_size: int, by, seed: int):
    """The traced and split model (on meta: shapes only), kept for the plans that follow in
    this process (a preflight and its checks, several schedules of one model in tests);
    stages are materialized from it by deep copy, so it is never changed."""
    from ppc.frontend import build_split

    return build_split(model, stages=stages, seq_len=seq_len, microbatch_size=microbatch_size, by=by, seed=seed)


def build_plan(config: RunConfig) -> Plan:
    """Expand, split and compile: the same deterministic plan on every rank."""
    from ppc.exec.program_file import is_program_file, load_for_run, program_for_run

    from ppc.compiler import compile_program
    from ppc.frontend import materialize_stage

    if is_program_file(config.schedule):  # run exactly the file's instructions, once checked
        loaded, compiled_graph = load_for_run(config)
        split = _split(config.model, loaded.stages, config.seq_len, config.microbatch_size, config.split_by,
                       config.seed)
        program = program_for_run(loaded, compiled_graph, config, split.graph)
    else:
        order = build_order(config)
        split = _split(config.model, order.stages, config.seq_len, config.microbatch_size, config.split_by,
                       config.seed)
        program = compile_program(order, split.graph, dp=config.dp)

    def materialize(stage: int, device: torch.device) -> torch.nn.Module:
        return materialize_stage(split, stage, device=device, seed=config.seed)

    return Plan(program=program, split=split, materialize=materialize, model=config.model)

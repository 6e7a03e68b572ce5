"""A compiled program file as the run's schedule: `ppc run --schedule program.json`.

`ppc compile SCHEDULE --model M --format json` writes each rank's instructions with their
tensor specs, and its stage graph. A user may edit it (move a receive earlier, reorder
transfers, change the compute order) and run exactly what the file says. Before a rank
runs it, the file must fit this run: its ranks and microbatches are the flags', its stage
graph is the model's split at this sequence length and microbatch size, and each rank holds
the same instructions a fresh lowering of the file's own compute order would give, in any
order the verifier accepts (complete, matched transfers, no deadlock). So an edit can
change when things happen, never what is computed or sent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from ppc.errors import RunError
from ppc.ir.order import Action, ComputeOrder
from ppc.ir.program import Instruction, Program

__all__ = ["compute_order", "is_program_file", "load_for_run", "load_program", "program_for_run"]


def is_program_file(schedule: str) -> bool:
    """Whether `--schedule` names a compiled program rather than a schedule."""
    return schedule.endswith(".json")


def load_program(path: str):
    """(Program, StageGraph or None) from `ppc compile --format json` output."""
    from ppc.inputs import read_json
    from ppc.ir.program import program_file

    return program_file(read_json(path, error=RunError, what="compiled program", limit=2**30), path)


def load_for_run(config):
    """(Program, StageGraph or None) of `config.schedule`, its shape checked against the run's flags."""
    program, graph = load_program(config.schedule)
    check_shape(program, config, config.schedule)
    return program, graph


def check_shape(program: Program, config, path: str) -> None:
    """The run's --ranks, --microbatches and --virtual-stages are the program's."""
    wanted = {"--ranks": (config.ranks, program.ranks), "--microbatches": (config.microbatches, program.microbatches)}
    if config.virtual is not None:
        wanted["--virtual-stages"] = (config.virtual, program.virtual)
    for flag, (given, compiled) in wanted.items():
        if given != compiled:
            raise RunError(f"{path} is compiled for {flag} {compiled}, this run has {given}: pass {flag} {compiled}")
    if config.placement is not None:
        raise RunError(f"{path} fixes its placement; --placement does not apply to a compiled program")


def program_for_run(program: Program, compiled_graph, config, graph) -> Program:
    """`program` (read by load_for_run with its `compiled_graph`), checked against this
    run's stage `graph` (the model's split) and given the gradient reductions of
    `config.dp` replicas when it has none."""
    from ppc.compiler import compile_program
    from ppc.compiler.reduce import add_grad_reductions
    from ppc.verify.program import validate

    path = config.schedule
    _check_graph(compiled_graph, graph, path)
    if config.dp > 1 and not any(ins.op.name == "REDUCE_GRAD" for row in program.instructions for ins in row):
        rows = [list(row) for row in program.instructions]
        add_grad_reductions(rows, graph, config.dp)
        program = replace(program, instructions=tuple(tuple(row) for row in rows))
    expected = compile_program(compute_order(program), graph, dp=config.dp)
    for rank, (mine, fresh) in enumerate(zip(program.instructions, expected.instructions)):
        _check_same_instructions(rank, mine, fresh, path)
    validate(program, graph)
    return program


def compute_order(program: Program) -> ComputeOrder:
    """The program's compute instructions, per rank in their order."""
    return ComputeOrder(
        schedule=program.schedule, ranks=program.ranks, stages=program.stages,
        microbatches=program.microbatches, placement=program.placement,
        compute=tuple(tuple(_action(ins) for ins in row if ins.op.is_compute) for row in program.instructions),
    )


def _action(ins: Instruction) -> Action:
    if ins.parts:
        return Action.overlapped(ins.op, tuple(_action(p) for p in ins.parts))
    return Action(stage=ins.stage, kind=ins.op, mb=ins.mb)


def _check_graph(compiled, graph, path: str) -> None:
    if compiled is None:
        raise RunError(f"{path} holds no stage graph: compile it with --model (and the run's --seq-len, "
                       "--microbatch-size and --split)")
    if compiled.to_json() == graph.to_json():
        return
    theirs = {v.name: v for v in compiled.values}
    for value in graph.values:
        other = theirs.get(value.name)
        if other is None or other.spec != value.spec:
            shown = "absent" if other is None else _shape(other.spec)
            raise RunError(f"{path} was compiled for another model or shape: {value.name} is {shown} there, "
                           f"{_shape(value.spec)} in this run (compile it with this run's --model, "
                           "--seq-len, --microbatch-size and --split)")
    raise RunError(f"{path} was compiled for another split of the model (compile it with this run's --model, "
                   "--seq-len, --microbatch-size and --split)")


def _shape(spec) -> str:
    return "unknown" if spec is None else f"{list(spec.shape)} {spec.dtype}"


def _check_same_instructions(rank: int, mine, fresh, path: str) -> None:
    extra, missing = Counter(mine) - Counter(fresh), Counter(fresh) - Counter(mine)
    if extra:
        ins = next(iter(extra))
        raise RunError(f"{path}: rank {rank} has {_describe(ins)}, which its compute order does not need")
    if missing:
        ins = next(iter(missing))
        raise RunError(f"{path}: rank {rank} lacks {_describe(ins)}, which its compute order needs")


def _describe(ins: Instruction) -> str:
    if ins.op.is_comm:
        way = "to" if ins.op.is_send else "from"
        return f"{ins} {way} rank {ins.peer} ({', '.join(t.name for t in ins.tensors) or 'no tensors'})"
    return str(ins)

"""A rank's program: instructions with tensor specs, for every rank, for one step.

Instructions print in torch.distributed.pipelining's action syntax (`2F0`, `0SEND_F1`)
and parse back; their kinds, meanings and pairing rules are the op table's
(ppc.ir.ops). Programs and their records round-trip through JSON (`to_json` /
`from_json`), so a compiled program is a file the simulator and executor can read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from ppc.ir import ops
from ppc.ir.ops import Op, OpKind

__all__ = ["Instruction", "Op", "Program", "TensorSpec", "format_program", "make", "program_file"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorSpec:
    """A tensor known at compile time, so receivers preallocate it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "bytes": self.bytes}

    @classmethod
    def from_json(cls, data: dict) -> TensorSpec:
        return cls(name=str(data["name"]), shape=tuple(int(d) for d in data["shape"]),
                   dtype=str(data["dtype"]), bytes=int(data["bytes"]))


@lru_cache(maxsize=1)
def _instr_re() -> re.Pattern:
    names = sorted((k.name for k in ops.table()), key=len, reverse=True)
    return re.compile(r"^(\d+)(" + "|".join(map(re.escape, names)) + r")(\d+)$")


ops.on_change(_instr_re.cache_clear)


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """One step of a rank's program.

    For communication, `peer` is the other rank and `peer_stage` the stage there
    (the consumer for SEND_F, the producer for RECV_F, and the reverse for B).
    """

    op: OpKind
    stage: int
    mb: int
    peer: int | None = None
    peer_stage: int | None = None
    tensors: tuple[TensorSpec, ...] = field(default=())
    parts: tuple[Instruction, ...] = field(default=())
    """An overlapped op's compute parts (its stage and mb are the first part's)."""

    def __str__(self) -> str:
        if self.parts:
            return f"({';'.join(map(str, self.parts))}){self.op.csv}"
        return f"{self.stage}{self.op.name}{self.mb}"

    @classmethod
    def parse(cls, text: str) -> Instruction:
        match = _instr_re().match(text.strip())
        if match is None:
            raise ValueError(f"not an instruction: {text!r}")
        stage, op, mb = match.groups()
        return cls(op=ops.get(op), stage=int(stage), mb=int(mb))

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)

    def to_json(self) -> dict:
        record = {
            "op": self.op.name,
            "stage": self.stage,
            "mb": self.mb,
            "peer": self.peer,
            "peer_stage": self.peer_stage,
            "tensors": [t.to_json() for t in self.tensors],
        }
        if self.parts:
            record["parts"] = [p.to_json() for p in self.parts]
        return record

    @classmethod
    def from_json(cls, data: dict, specs: dict | None = None) -> Instruction:
        """Read `to_json` output; `specs` interns equal tensor lists (programs share few)."""
        tensors = tuple(TensorSpec.from_json(t) for t in data.get("tensors", ()))
        if specs is not None:
            tensors = specs.setdefault(tensors, tensors)
        parts = tuple(cls.from_json(p) for p in data.get("parts", ()))
        peer, peer_stage = data.get("peer"), data.get("peer_stage")
        return make(ops.get(data["op"]), int(data["stage"]), int(data["mb"]),
                    None if peer is None else int(peer), None if peer_stage is None else int(peer_stage),
                    tensors, parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Program:
    """What every rank runs for one training step; read by both simulator and executor."""

    schedule: str
    ranks: int
    stages: int
    microbatches: int
    placement: tuple[int, ...]
    instructions: tuple[tuple[Instruction, ...], ...]
    """instructions[r] is rank r's program in order."""
    notes: tuple[str, ...] = ()
    """Choices the compiler made that a user should see (recomputed values, tied weights)."""

    @property
    def virtual(self) -> int:
        return self.stages // self.ranks

    def to_json(self) -> dict:
        return {
            "schedule": self.schedule,
            "ranks": self.ranks,
            "stages": self.stages,
            "microbatches": self.microbatches,
            "placement": list(self.placement),
            "notes": list(self.notes),
            "instructions": [[i.to_json() for i in row] for row in self.instructions],
        }

    @classmethod
    def from_json(cls, data: dict) -> Program:
        """Read `to_json` output (unknown op names raise KeyError; callers word it)."""
        specs: dict = {}
        return cls(
            schedule=str(data["schedule"]),
            ranks=int(data["ranks"]),
            stages=int(data["stages"]),
            microbatches=int(data["microbatches"]),
            placement=tuple(int(r) for r in data["placement"]),
            notes=tuple(str(n) for n in data.get("notes", ())),
            instructions=tuple(
                tuple(Instruction.from_json(i, specs) for i in row) for row in data["instructions"]
            ),
        )


_new = object.__new__
_set_op, _set_stage, _set_mb, _set_peer, _set_peer_stage, _set_tensors, _set_parts = (
    Instruction.__dict__[name].__set__
    for name in ("op", "stage", "mb", "peer", "peer_stage", "tensors", "parts")
)


def make(op: OpKind, stage: int, mb: int, peer: int | None = None, peer_stage: int | None = None,
         tensors: tuple = (), parts: tuple = ()) -> Instruction:
    """Instruction(op=op, stage=stage, ...) without the frozen dataclass's per-field overhead
    (lowering builds a million of them)."""
    instr = _new(Instruction)
    _set_op(instr, op)
    _set_stage(instr, stage)
    _set_mb(instr, mb)
    _set_peer(instr, peer)
    _set_peer_stage(instr, peer_stage)
    _set_tensors(instr, tensors)
    _set_parts(instr, parts)
    return instr


def format_program(program: Program) -> str:
    """Each rank's instructions on one line: transfers with their peer and payload size."""
    lines = [f"note: {note}" for note in program.notes]
    for rank, row in enumerate(program.instructions):
        cells = []
        for ins in row:
            if ins.op.is_comm:
                arrow = "->" if ins.op.is_send else "<-"
                cells.append(f"{ins}{arrow}r{ins.peer}({ins.bytes / 2**10:.0f}KiB)")
            else:
                cells.append(str(ins))
        lines.append(f"rank {rank} instructions: " + " ".join(cells))
    return "\n".join(lines) + "\n"


def codes(instructions) -> list[int]:
    """The op-table code of each instruction."""
    return [i.op.code for i in instructions]


def program_file(data: dict, source: str):
    """(Program, StageGraph or None) from `ppc compile --format json` output; one
    ValidationError line, naming `source`, when the file is not such a record."""
    from ppc.errors import ValidationError
    from ppc.ir.stage_graph import StageGraph

    if not isinstance(data, dict) or not isinstance(data.get("program"), dict):
        raise ValidationError(f"{source}: not a compiled program (write one with "
                              "`ppc compile ... --format json`)")
    try:
        program = Program.from_json(data["program"])
        graph = StageGraph.from_json(data["graph"]) if data.get("graph") else None
    except KeyError as missing:
        raise ValidationError(f"{source}: program record lacks {missing} (or names an op not "
                              f"in the table: known {', '.join(k.name for k in ops.table())})") from None
    except (TypeError, ValueError, AttributeError) as error:
        raise ValidationError(f"{source}: malformed program record: {error}") from None
    _check_record(program, graph, source)
    return program, graph


def _check_record(program: Program, graph, source: str) -> None:
    """What the JSON types alone do not say: parts only on an overlapped op, and a stage
    graph of the program's stages."""
    from ppc.errors import ValidationError

    for rank, row in enumerate(program.instructions):
        for position, ins in enumerate(row):
            if bool(ins.parts) != bool(ins.op.parts):
                wants = "is made of parts" if ins.op.parts else "has no parts"
                raise ValidationError(f"{source}: rank {rank} position {position}: {ins.op.name} {wants}")
    if graph is not None and graph.num_stages != program.stages:
        raise ValidationError(f"{source}: the stage graph has {graph.num_stages} stages, "
                              f"the program {program.stages}")

"""The instruction set of a rank's program: compute, point-to-point, and step-level ops.

Each kind has a one-line meaning and its pairing rule. Instructions print in
torch.distributed.pipelining's action syntax (`2F0`, `0SEND_F1`) and parse back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum


class Op(str, Enum):
    F = "F"
    """Forward of (stage, mb); its inputs were received or are local."""
    B = "B"
    """Full backward of (stage, mb); needs the F and the output gradients."""
    I = "I"
    """Backward for inputs only; a W of the same (stage, mb) must follow on this rank."""
    W = "W"
    """Backward for weights only; needs the I of the same (stage, mb)."""
    SEND_F = "SEND_F"
    """Send activations of (stage, mb) to `peer`; matched by exactly one RECV_F there."""
    RECV_F = "RECV_F"
    """Receive activations for (stage, mb) from `peer`; matched by exactly one SEND_F there."""
    SEND_B = "SEND_B"
    """Send input gradients of (stage, mb) to `peer`; matched by exactly one RECV_B there."""
    RECV_B = "RECV_B"
    """Receive output gradients for (stage, mb) from `peer`; matched by exactly one SEND_B there."""
    REDUCE_TIED = "REDUCE_TIED"
    """Sum tied-weight gradients with the ranks in `tensors` owners; every owner runs it once."""
    STEP = "STEP"
    """Clip by the global norm and take the optimizer step; once per rank, last."""

    def __str__(self) -> str:
        return self.value

    @property
    def is_compute(self) -> bool:
        return self in (Op.F, Op.B, Op.I, Op.W)

    @property
    def is_send(self) -> bool:
        return self in (Op.SEND_F, Op.SEND_B)

    @property
    def is_recv(self) -> bool:
        return self in (Op.RECV_F, Op.RECV_B)

    @property
    def is_comm(self) -> bool:
        return self.is_send or self.is_recv


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorSpec:
    """A tensor known at compile time, so receivers preallocate it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "bytes": self.bytes}


_INSTR_RE = re.compile(r"^(\d+)(SEND_F|RECV_F|SEND_B|RECV_B|REDUCE_TIED|STEP|F|B|I|W)(\d+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """One step of a rank's program.

    For communication, `peer` is the other rank and `peer_stage` the stage there
    (the consumer for SEND_F, the producer for RECV_F, and the reverse for B).
    """

    op: Op
    stage: int
    mb: int
    peer: int | None = None
    peer_stage: int | None = None
    tensors: tuple[TensorSpec, ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.stage}{self.op.value}{self.mb}"

    @classmethod
    def parse(cls, text: str) -> Instruction:
        match = _INSTR_RE.match(text.strip())
        if match is None:
            raise ValueError(f"not an instruction: {text!r}")
        stage, op, mb = match.groups()
        return cls(op=Op(op), stage=int(stage), mb=int(mb))

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)

    def to_json(self) -> dict:
        return {
            "op": self.op.value,
            "stage": self.stage,
            "mb": self.mb,
            "peer": self.peer,
            "peer_stage": self.peer_stage,
            "tensors": [t.to_json() for t in self.tensors],
        }


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

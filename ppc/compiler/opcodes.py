"""Small-integer codes for instruction kinds, and a fast Instruction builder.

Passes over programs of a million instructions compare ints instead of calling Enum
properties (Enum hashing and properties run Python code); `make` builds the same
frozen Instruction as its dataclass constructor at a fraction of the cost.
"""

from __future__ import annotations

from ppc.compiler.instructions import Instruction, Op

F, B, I, W, SEND_F, RECV_F, SEND_B, RECV_B, REDUCE_TIED, STEP = range(10)
CODE: dict[str, int] = {
    "F": F, "B": B, "I": I, "W": W, "SEND_F": SEND_F, "RECV_F": RECV_F,
    "SEND_B": SEND_B, "RECV_B": RECV_B, "REDUCE_TIED": REDUCE_TIED, "STEP": STEP,
}
OP_OF: tuple[Op, ...] = tuple(Op(name) for name in CODE)
"""OP_OF[code] is the Op."""


def is_compute(code: int) -> bool:
    return code <= W


def is_comm(code: int) -> bool:
    return SEND_F <= code <= RECV_B


def is_send(code: int) -> bool:
    return code == SEND_F or code == SEND_B


def codes(instructions) -> list[int]:
    """The code of each instruction (ValueError-free: an unknown op raises KeyError)."""
    code = CODE
    return [code[i.op._value_] for i in instructions]


_new = object.__new__
_set_op, _set_stage, _set_mb, _set_peer, _set_peer_stage, _set_tensors = (
    Instruction.__dict__[name].__set__ for name in ("op", "stage", "mb", "peer", "peer_stage", "tensors")
)


def make(op: Op, stage: int, mb: int, peer: int | None = None, peer_stage: int | None = None,
         tensors: tuple = ()) -> Instruction:
    """Instruction(op=op, stage=stage, ...) without the frozen dataclass's per-field overhead."""
    instr = _new(Instruction)
    _set_op(instr, op)
    _set_stage(instr, stage)
    _set_mb(instr, mb)
    _set_peer(instr, peer)
    _set_peer_stage(instr, peer_stage)
    _set_tensors(instr, tensors)
    return instr

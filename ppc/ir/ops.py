"""The op table: the one place that lists every instruction kind.

Each row says what an op means and how it pairs, how it is spelled (schedule statement,
torch CSV), whether it computes or communicates, what it costs, what it waits for, what
it does to activation memory, and its colour in pictures. Everything else derives from
this table: the grammar's op token, action parsing and printing, lowering, the verifier,
both timeline engines, the memory model, pictures and traces, and the runtime's dispatch
(which looks up one handler per row). A new op kind is a `register()` call, a runtime
handler and a cost rule.

Passes over programs of a million instructions compare small ints: every kind has a
`code` (its row number), and `Codes` gives the hot loops flat per-code lookups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "Category", "Memory", "Op", "OpKind", "colours", "compute_kinds", "get", "lookup", "register", "table",
    "unregister",
]


class Category(str, Enum):
    """How the timeline engines and the runtime treat an op."""

    COMPUTE = "compute"
    """Runs the rank's device for its cost; one per (stage, microbatch) at most."""
    SEND = "send"
    """Posted without waiting; its message arrives after the transfer time."""
    RECV = "recv"
    """Waits for the matching send's message."""
    COLLECTIVE = "collective"
    """Waits for every member of its group, then takes the transfer time of its tensors."""
    REDUCE = "reduce"
    """Starts a collective with the same rank of every other pipeline replica (outside this
    program: data parallelism); the rank goes on computing, and its STEP waits for it."""
    STEP = "step"
    """The optimizer step: a global sync (grad norm), then the rank's step cost; last."""


@dataclass(frozen=True, slots=True)
class Memory:
    """What an op does to its (stage, microbatch)'s activation memory.

    `sets` is the change in alive activation sets (F: +1; the op after which nothing is
    kept: -1). Bytes change by `(whole + share * weight_share) * stage_bytes`, where
    `weight_share` is the part of the activations that W still needs after I.
    """

    sets: int = 0
    whole: float = 0.0
    share: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class OpKind:
    """One instruction kind. Compared by identity: every kind exists once, in the table."""

    name: str
    """Printed name (`2F0`, `0SEND_F1`), the schedule statement and the JSON spelling."""
    doc: str
    """What it does."""
    pairing: str
    """What it must pair with ("a SEND_F is matched by exactly one RECV_F on the peer")."""
    category: Category
    csv: str | None = None
    """torch.distributed.pipelining's spelling, if torch has this action."""
    statement: bool = False
    """Whether schedules may write it (`F(s, m)`): the grammar's op token lists these."""
    cost: Callable[[object, object], float] | None = None
    """Compute cost rule: (CostModel, stage) -> time; for an overlapped op
    (CostModel, parts) -> time, its parts given as (kind, stage, mb)."""
    needs: tuple[str, ...] = ()
    """Phases of the same (stage, microbatch) that must have run before it on the rank."""
    precedes: tuple[str, ...] = ()
    """Phases of the same (stage, microbatch) that must not have run before it on the rank
    (it comes before the op that computes them)."""
    drops: tuple[str, ...] = ()
    """Phases after which a (stage, microbatch) that has this op keeps nothing: its
    activations are released right after the op that computes the phase, and this op's
    own `memory` effect holds them again (recompute)."""
    phases: tuple[str, ...] = ()
    """Parts of a (stage, microbatch)'s work it performs: each required phase runs exactly
    once per (stage, microbatch), by one op ("forward"; "input_grad", "weight_grad")."""
    reads: str | None = None
    """Cross-stage data it waits for: "activations" (from upstream F) or "gradients"."""
    makes: str | None = None
    """Cross-stage data it produces: "activations" or "gradients" (for upstream stages)."""
    parts: tuple[tuple[str, ...], ...] = ()
    """For an overlapped op: the kinds each part may be (("F",), ("B", "I"))): it runs a
    forward of one (stage, mb) and a backward of another as one unit; its needs, phases,
    reads, makes and memory are its parts'. Empty for an ordinary op."""
    carries: str | None = None
    """What a send or receive moves: "activations" (forward) or "gradients" (backward)."""
    memory: Memory = field(default_factory=Memory)
    colour: str = "#9e9e9e"
    """Fill colour in pictures (hex); the terminal Gantt uses it as a background."""
    code: int = -1
    """Row number, set by `register`."""

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Op.{self.name}"

    def __reduce__(self):  # pickles (multiprocessing, torch.save) by name
        return (get, (self.name,))

    @property
    def is_compute(self) -> bool:
        return self.category is Category.COMPUTE

    @property
    def is_send(self) -> bool:
        return self.category is Category.SEND

    @property
    def is_recv(self) -> bool:
        return self.category is Category.RECV

    @property
    def is_comm(self) -> bool:
        return self.category is Category.SEND or self.category is Category.RECV

    @property
    def value(self) -> str:
        """The name (kept so code written against an Enum reads the same)."""
        return self.name


REQUIRED_PHASES = ("forward", "input_grad", "weight_grad")
"""Every (stage, microbatch) runs each of these exactly once, in this order."""

_TABLE: list[OpKind] = []
_BY_NAME: dict[str, OpKind] = {}
_listeners: list[Callable[[], None]] = []


def register(kind: OpKind) -> OpKind:
    """Add a kind to the table (its code is the next row); returns the registered kind."""
    if kind.name in _BY_NAME:
        raise ValueError(f"op {kind.name!r} is already in the table")
    if not kind.name.isidentifier() or kind.name[0].isdigit():
        raise ValueError(f"op name {kind.name!r} must be an identifier")
    if kind.category is Category.COMPUTE and kind.cost is None:
        raise ValueError(f"compute op {kind.name!r} needs a cost rule")
    if kind.parts and any(lookup(p) is None or lookup(p).parts for alts in kind.parts for p in alts):
        raise ValueError(f"overlapped op {kind.name!r}: its parts must be ordinary ops in the table")
    registered = OpKind(**{f: getattr(kind, f) for f in _FIELDS if f != "code"}, code=len(_TABLE))
    _TABLE.append(registered)
    _BY_NAME[registered.name] = registered
    _changed()
    return registered


def unregister(name: str) -> None:
    """Remove the most recently registered kind (tests that add a toy op undo it)."""
    if not _TABLE or _TABLE[-1].name != name:
        raise ValueError(f"only the last registered op can be removed, not {name!r}")
    del _BY_NAME[_TABLE.pop().name]
    _changed()


PLUGINS_ENV = "PPC_PLUGINS"


def load_plugins() -> None:
    """Import the modules named in $PPC_PLUGINS (comma-separated): each registers its op
    kinds (and, for `ppc run`, their runtime handlers) when imported. Every `ppc`
    process, the ranks of a run included, calls this first."""
    import importlib
    import os

    from ppc.errors import PpcError

    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise PpcError(f"${PLUGINS_ENV}: cannot import {name!r}: {error}") from None


def on_change(callback: Callable[[], None]) -> None:
    """Call `callback` whenever the table changes (caches derived from it reset)."""
    _listeners.append(callback)


def _changed() -> None:
    Codes.current = None
    for callback in _listeners:
        callback()


def table() -> tuple[OpKind, ...]:
    return tuple(_TABLE)


def get(name: str) -> OpKind:
    """The kind called `name`; KeyError if there is none."""
    return _BY_NAME[name]


def lookup(name: str) -> OpKind | None:
    return _BY_NAME.get(name)


def compute_kinds() -> tuple[OpKind, ...]:
    return tuple(k for k in _TABLE if k.category is Category.COMPUTE)


def colours() -> dict[str, str]:
    """Picture colour of each compute kind, by name, in table order."""
    return {k.name: k.colour for k in compute_kinds()}


class _OpNamespace:
    """`Op.F`, `Op.SEND_F`, ...: attribute access to the table by name."""

    def __getattr__(self, name: str) -> OpKind:
        try:
            return _BY_NAME[name]
        except KeyError:
            raise AttributeError(f"no op {name!r}; known: {', '.join(_BY_NAME)}") from None

    def __call__(self, name: str) -> OpKind:
        return get(name)

    def __iter__(self):
        return iter(tuple(_TABLE))


Op = _OpNamespace()
"""`Op.F` is the forward's OpKind; `Op("SEND_F")` looks one up by name."""


class Codes:
    """Flat per-code lookups for hot loops, rebuilt when the table changes."""

    current: Codes | None = None

    def __init__(self) -> None:
        kinds = _TABLE
        self.n = len(kinds)
        self.is_compute = bytes(k.category is Category.COMPUTE for k in kinds)
        self.is_comm = bytes(k.category in (Category.SEND, Category.RECV) for k in kinds)
        self.is_send = bytes(k.category is Category.SEND for k in kinds)
        self.is_recv = bytes(k.category is Category.RECV for k in kinds)
        self.is_collective = bytes(k.category is Category.COLLECTIVE for k in kinds)
        self.is_step = bytes(k.category is Category.STEP for k in kinds)
        self.is_reduce = bytes(k.category is Category.REDUCE for k in kinds)
        self.compute = tuple(k for k in kinds if k.category is Category.COMPUTE)
        self.slot = [-1] * self.n
        """slot[code] = index of a compute kind among compute kinds (-1 otherwise)."""
        for i, k in enumerate(self.compute):
            self.slot[k.code] = i
        self.memory = [k.memory for k in kinds]
        self.is_composite = bytes(bool(k.parts) for k in kinds)
        self.backward_comm = bytes(k.carries == "gradients" for k in kinds)
        """1 for transfers of gradients (their route runs from the receiver's stage)."""

    @classmethod
    def get(cls) -> Codes:
        if cls.current is None:
            cls.current = cls()
        return cls.current


_FIELDS = tuple(OpKind.__dataclass_fields__)


def _forward(costs, stage: int) -> float:
    return costs.forward[stage]


def _full_backward(costs, stage: int) -> float:
    return costs.backward_input[stage] + costs.backward_weight[stage]


def _backward_input(costs, stage: int) -> float:
    return costs.backward_input[stage]


def _backward_weight(costs, stage: int) -> float:
    return costs.backward_weight[stage]


def _overlapped(costs, parts) -> float:
    """An overlapped op's time: the costs' `overlap` rule applied to the sum of its
    (kind, stage, mb) parts' times."""
    return costs.overlapped(sum(kind.cost(costs, stage) for kind, stage, _ in parts))


def composite_kind(kinds: tuple[str, ...], csv: str) -> OpKind | None:
    """The overlapped op whose parts are these kinds, spelled `csv` in torch's CSV."""
    for k in _TABLE:
        if k.parts and k.csv == csv and len(k.parts) == len(kinds) and all(
                name in alts for name, alts in zip(kinds, k.parts)):
            return k
    return None


def _builtin() -> None:
    compute, send, recv = Category.COMPUTE, Category.SEND, Category.RECV
    rows = [
        OpKind(name="F", doc="Forward of (stage, mb); its inputs were received or are local.",
               pairing="one per (stage, mb), before that pair's backward",
               category=compute, csv="F", statement=True, cost=_forward, phases=("forward",),
               reads="activations", makes="activations", memory=Memory(sets=1, whole=1.0),
               colour="#4c9be8"),
        OpKind(name="B", doc="Full backward of (stage, mb): gradients for inputs and weights.",
               pairing="one per (stage, mb) unless that pair runs I and W instead",
               category=compute, csv="B", statement=True, cost=_full_backward, needs=("forward",),
               phases=("input_grad", "weight_grad"), reads="gradients", makes="gradients",
               memory=Memory(sets=-1, whole=-1.0), colour="#b565c9"),
        OpKind(name="I", doc="Backward for inputs only; keeps what W needs.",
               pairing="a W of the same (stage, mb) must follow on this rank",
               category=compute, csv="I", statement=True, cost=_backward_input, needs=("forward",),
               phases=("input_grad",), reads="gradients", makes="gradients",
               memory=Memory(whole=-1.0, share=1.0), colour="#e8b04c"),
        OpKind(name="W", doc="Backward for weights only; frees the rest of the activations.",
               pairing="follows the I of the same (stage, mb) on this rank",
               category=compute, csv="W", statement=True, cost=_backward_weight, needs=("input_grad",),
               phases=("weight_grad",), memory=Memory(sets=-1, share=-1.0), colour="#5cb85c"),
        OpKind(name="FB", doc="Forward of one (stage, mb) and full backward of another, as one unit.",
               pairing="its parts pair as an F and a B would", category=compute,
               csv="OVERLAP_F_B", statement=True, cost=_overlapped, parts=(("F",), ("B",)),
               colour="#7a5cc9"),
        OpKind(name="FI", doc="Forward of one (stage, mb) and input backward of another, as one unit.",
               pairing="its parts pair as an F and an I would", category=compute,
               csv="OVERLAP_F_B", statement=True, cost=_overlapped, parts=(("F",), ("I",)),
               colour="#c97a5c"),
        OpKind(name="RF", doc="Recompute (re-forward) of (stage, mb), whose forward kept only its inputs.",
               pairing="at most once per (stage, mb), after its forward and before its backward",
               category=compute, statement=True, cost=_forward, needs=("forward",),
               precedes=("input_grad",), drops=("forward",), memory=Memory(sets=1, whole=1.0),
               colour="#8fc7f0"),
        OpKind(name="SEND_F", doc="Send activations of (stage, mb) to `peer`.",
               pairing="matched by exactly one RECV_F on the peer", category=send, csv="SEND_F",
               colour="#7f8c8d", carries="activations"),
        OpKind(name="RECV_F", doc="Receive activations for (stage, mb) from `peer`.",
               pairing="matched by exactly one SEND_F on the peer", category=recv, csv="RECV_F",
               colour="#bdc3c7", carries="activations"),
        OpKind(name="SEND_B", doc="Send input gradients of (stage, mb) to `peer`.",
               pairing="matched by exactly one RECV_B on the peer", category=send, csv="SEND_B",
               colour="#5d6d7e", carries="gradients"),
        OpKind(name="RECV_B", doc="Receive output gradients for (stage, mb) from `peer`.",
               pairing="matched by exactly one SEND_B on the peer", category=recv, csv="RECV_B",
               colour="#aab7b8", carries="gradients"),
        OpKind(name="REDUCE_TIED", doc="Sum a tied weight's gradients across its owning ranks.",
               pairing="every owning rank runs it once, for the same tensor",
               category=Category.COLLECTIVE, colour="#d9534f"),
        OpKind(name="REDUCE_GRAD", doc="Reduce a stage's gradients across the pipeline replicas "
               "(an all-reduce; the simulator times ZeRO-1 as a reduce-scatter).",
               pairing="once per stage and step, after the stage's last backward on its rank; "
               "the same rank of every replica runs it", category=Category.REDUCE, csv="REDUCE_GRAD",
               colour="#e377c2"),
        OpKind(name="STEP", doc="Clip by the global norm and take the optimizer step.",
               pairing="once per rank, last", category=Category.STEP, colour="#34495e"),
    ]
    for row in rows:
        register(row)


_builtin()

"""Routes: which stage's values go to which rank, and which gradients come back.

A route groups every value that one producer stage sends to one consumer rank, so a
microbatch's activations travel as one instruction (one message per tensor) and the
gradients of the `requires_grad` ones travel back as one instruction. Batch inputs
(producer INPUT) and recomputed values never travel. Routes whose consumers sit on the
producer's own rank are kept too (`local`): they order compute but move nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppc.ir.program import TensorSpec
from ppc.ir.stage_graph import INPUT, StageGraph


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Values of stage `producer` read on rank `rank` (per microbatch)."""

    producer: int
    rank: int
    """Consumer rank."""
    consumers: tuple[int, ...]
    """Stages on `rank` that read a value of `producer`, ascending."""
    grad_consumers: tuple[int, ...]
    """The consumers whose backward yields a gradient for `producer` (requires_grad values)."""
    forward: tuple[TensorSpec, ...]
    """Tensor specs sent forward (empty in a synthetic graph)."""
    backward: tuple[TensorSpec, ...]
    """Gradient specs sent back (empty in a synthetic graph)."""
    local: bool
    """Whether the consumers sit on the producer's rank (nothing is sent)."""

    @property
    def has_backward(self) -> bool:
        return bool(self.grad_consumers)


def plan_routes(graph: StageGraph, placement: tuple[int, ...]) -> tuple[Route, ...]:
    """Group the graph's values by (producer stage, consumer rank), in a stable order.

    Requires: every stage in the graph has a rank in `placement`.
    Guarantees: one Route per (producer, consumer rank) pair that exchanges anything.
    """
    groups: dict[tuple[int, int], dict[str, list]] = {}
    for value in graph.values:
        if value.producer == INPUT or value.recompute:
            continue
        for consumer in value.consumers:
            if consumer == value.producer:
                continue
            key = (value.producer, placement[consumer])
            group = groups.setdefault(key, {"consumers": set(), "grad": set(), "fwd": [], "bwd": []})
            group["consumers"].add(consumer)
            if value.requires_grad:
                group["grad"].add(consumer)
        for rank in sorted({placement[c] for c in value.consumers if c != value.producer}):
            group = groups[(value.producer, rank)]
            if value.spec is not None:
                group["fwd"].append(value.spec)
                if value.requires_grad:
                    group["bwd"].append(value.spec)
    return tuple(
        Route(
            producer=producer,
            rank=rank,
            consumers=tuple(sorted(g["consumers"])),
            grad_consumers=tuple(sorted(g["grad"])),
            forward=tuple(g["fwd"]),
            backward=tuple(g["bwd"]),
            local=placement[producer] == rank,
        )
        for (producer, rank), g in sorted(groups.items())
    )


def graph_notes(graph: StageGraph, placement: tuple[int, ...]) -> tuple[str, ...]:
    """Notes a user should see: recomputed values and tied weights."""
    notes = []
    for value in graph.values:
        if value.recompute and value.producer != INPUT:
            stages = ", ".join(map(str, value.consumers))
            notes.append(
                f"{value.name}: recomputed on stages {stages} instead of sent from stage {value.producer}"
            )
    for tied in graph.tied:
        ranks = sorted({placement[s] for s in tied.stages})
        notes.append(
            f"tied weight {tied.name} on stages {', '.join(map(str, tied.stages))}: gradients summed "
            f"by REDUCE_TIED on ranks {', '.join(map(str, ranks))} before STEP"
        )
    return tuple(notes)

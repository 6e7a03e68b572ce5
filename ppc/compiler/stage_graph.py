"""The compiler's view of a split model: stages and the values that cross them.

torch-free on purpose: the frontend fills it from an FX split graph; without a model
`synthetic_chain` stands in, so compile and simulate run with no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ppc.compiler.instructions import TensorSpec

INPUT = -1
"""Producer id of a value that every rank loads itself from the batch (input_ids, labels)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StageValue:
    """A value produced on one stage (or loaded from the batch) and used on others."""

    name: str
    producer: int
    """Producing stage, or INPUT for batch inputs (loaded locally, never sent)."""
    consumers: tuple[int, ...]
    """Stages that read it, ascending."""
    spec: TensorSpec | None = None
    """Shape and dtype per microbatch; None in a synthetic graph."""
    requires_grad: bool = True
    """Whether a gradient flows back to the producer (activations yes, masks no)."""
    recompute: bool = False
    """Parameter-free and cheap: each consumer recomputes it instead of receiving it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TiedWeight:
    """A parameter used by several stages; its gradient is summed across them."""

    name: str
    stages: tuple[int, ...]
    spec: TensorSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StageGraph:
    num_stages: int
    values: tuple[StageValue, ...]
    tied: tuple[TiedWeight, ...] = field(default=())
    activation_bytes: tuple[int, ...] = field(default=())
    """Per stage, bytes kept alive for backward per microbatch (empty if unknown)."""

    def inputs_of(self, stage: int) -> tuple[StageValue, ...]:
        return tuple(v for v in self.values if stage in v.consumers)

    def outputs_of(self, stage: int) -> tuple[StageValue, ...]:
        return tuple(v for v in self.values if v.producer == stage)


def synthetic_chain(num_stages: int) -> StageGraph:
    """A chain of stages where stage s sends one activation to s + 1."""
    values = tuple(
        StageValue(name=f"act{s}", producer=s, consumers=(s + 1,)) for s in range(num_stages - 1)
    )
    return StageGraph(num_stages=num_stages, values=values)

"""The IR's view of a split model: stages and the values that cross them.

torch-free on purpose: the frontend fills it from an FX split graph; without a model
`synthetic_chain` stands in, so compile and simulate run with no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ppc.ir.program import TensorSpec

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
    param_bytes: tuple[int, ...] = field(default=())
    """Per stage, bytes of its trainable parameters' gradients (empty if unknown): what a
    data-parallel gradient reduction moves."""

    def inputs_of(self, stage: int) -> tuple[StageValue, ...]:
        return tuple(v for v in self.values if stage in v.consumers)

    def outputs_of(self, stage: int) -> tuple[StageValue, ...]:
        return tuple(v for v in self.values if v.producer == stage)

    def to_json(self) -> dict:
        def spec(s: TensorSpec | None):
            return None if s is None else s.to_json()

        return {
            "num_stages": self.num_stages,
            "values": [
                {"name": v.name, "producer": v.producer, "consumers": list(v.consumers),
                 "spec": spec(v.spec), "requires_grad": v.requires_grad, "recompute": v.recompute}
                for v in self.values
            ],
            "tied": [{"name": t.name, "stages": list(t.stages), "spec": spec(t.spec)} for t in self.tied],
            "activation_bytes": list(self.activation_bytes),
            "param_bytes": list(self.param_bytes),
        }

    @classmethod
    def from_json(cls, data: dict) -> StageGraph:
        def spec(d):
            return None if d is None else TensorSpec.from_json(d)

        return cls(
            num_stages=int(data["num_stages"]),
            values=tuple(
                StageValue(name=v["name"], producer=int(v["producer"]),
                           consumers=tuple(int(c) for c in v["consumers"]), spec=spec(v.get("spec")),
                           requires_grad=bool(v.get("requires_grad", True)),
                           recompute=bool(v.get("recompute", False)))
                for v in data["values"]
            ),
            tied=tuple(TiedWeight(name=t["name"], stages=tuple(int(s) for s in t["stages"]),
                                  spec=spec(t.get("spec"))) for t in data.get("tied", ())),
            activation_bytes=tuple(int(b) for b in data.get("activation_bytes", ())),
            param_bytes=tuple(int(b) for b in data.get("param_bytes", ())),
        )


def synthetic_chain(num_stages: int) -> StageGraph:
    """A chain of stages where stage s sends one activation to s + 1."""
    values = tuple(
        StageValue(name=f"act{s}", producer=s, consumers=(s + 1,)) for s in range(num_stages - 1)
    )
    return StageGraph(num_stages=num_stages, values=values)

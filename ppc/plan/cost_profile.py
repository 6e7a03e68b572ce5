"""Costs per layer, so a planner can regroup layers into any number of stages.

A costs JSON (format: ppc/costs.py) may carry, next to the per-stage keys the
simulator reads, these optional keys::

    "layers": [{"name": "embed", "F": .., "I": .., "W": .. (or "B"),
                "params": 262668288, "activation_bytes": .., "output_bytes": ..}, ...],
    "split": [3, 2, ..],          # layers per stage of the per-stage F/I/W (model order)
    "microbatch_size": 1,         # the microbatch size the times were measured at
    "seq_len": 512,
    "op_overhead": 0.0,           # fixed time per compute op that does not scale
    "bytes_per_param": 16,        # weights + grads + optimizer state per parameter
    "stage_params": [..]          # parameters per stage (when there are no layers)

Scaling model. A microbatch of size b costs, per op, ``op_overhead + (t - op_overhead)
* b / b0`` where t was measured at size b0: time is linear in the tokens of the
microbatch plus a fixed launch cost. Activation bytes and message bytes are linear in
b; message latency is not. Linear time is pessimistic for larger microbatches on a GPU
that small ones leave idle, so the planner never overstates their benefit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ppc.costs import CostModel, read_costs_json
from ppc.errors import CostError
from ppc.ir.program import TensorSpec
from ppc.ir.stage_graph import StageGraph, StageValue


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerSpec:
    """One layer (or any unsplittable unit) in model order, per microbatch."""

    name: str
    forward: float
    backward_input: float
    backward_weight: float
    params: int = 0
    activation_bytes: int = 0
    """Bytes kept alive for backward per microbatch."""
    output_bytes: int = 0
    """Bytes sent to the next stage when a stage boundary follows this layer."""

    @property
    def total(self) -> float:
        return self.forward + self.backward_input + self.backward_weight

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "F": self.forward,
            "I": self.backward_input,
            "W": self.backward_weight,
            "params": self.params,
            "activation_bytes": self.activation_bytes,
            "output_bytes": self.output_bytes,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CostProfile:
    """A costs file read whole: per-stage costs plus, when present, per-layer costs."""

    stage_costs: CostModel
    layers: tuple[LayerSpec, ...] = ()
    split: tuple[int, ...] = ()
    """Layers per stage of `stage_costs` (empty: unknown)."""
    microbatch_size: int = 1
    seq_len: int | None = None
    op_overhead: float = 0.0
    bytes_per_param: float = 16.0
    stage_params: tuple[int, ...] = ()
    stage_output_bytes: tuple[int, ...] = ()
    """Per stage, bytes sent downstream per microbatch (when there are no layers)."""
    meta: dict = field(default_factory=dict)
    """Free-form provenance (model, device, how it was measured)."""

    def __post_init__(self) -> None:
        if self.split and (sum(self.split) != len(self.layers) or len(self.split) != self.stage_costs.stages):
            raise CostError(
                f"costs: split {list(self.split)} must give one count per stage summing to {len(self.layers)} layers"
            )
        if self.microbatch_size < 1:
            raise CostError(f"costs: microbatch_size must be >= 1, got {self.microbatch_size!r}")

    @property
    def stages(self) -> int:
        return self.stage_costs.stages

    # ------------------------------------------------------------------ JSON

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "costs") -> CostProfile:
        layers = tuple(_layer(entry, i, source) for i, entry in enumerate(data.get("layers", [])))
        stages = _stage_count(data, layers)
        if stages is None:
            raise CostError(f"{source}: give per-stage lists for F (and I, W or B) or a 'layers' list")
        if "F" not in data and layers:
            # only layers: one stage per layer
            data = {**data, "F": [x.forward for x in layers], "I": [x.backward_input for x in layers],
                    "W": [x.backward_weight for x in layers]}
        return cls(
            stage_costs=CostModel.from_dict(data, stages, source=source),
            layers=layers,
            split=tuple(int(n) for n in data.get("split", ())),
            microbatch_size=int(data.get("microbatch_size", 1)),
            seq_len=data.get("seq_len"),
            op_overhead=float(data.get("op_overhead", 0.0)),
            bytes_per_param=float(data.get("bytes_per_param", 16.0)),
            stage_params=tuple(int(p) for p in data.get("stage_params", ())),
            stage_output_bytes=tuple(int(p) for p in data.get("stage_output_bytes", ())),
            meta=dict(data.get("meta", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> CostProfile:
        return cls.from_dict(read_costs_json(path), source=str(path))

    def to_dict(self) -> dict:
        data = self.stage_costs.to_dict()
        if self.layers:
            data["layers"] = [layer.to_json() for layer in self.layers]
        if self.split:
            data["split"] = list(self.split)
        data["microbatch_size"] = self.microbatch_size
        if self.seq_len is not None:
            data["seq_len"] = self.seq_len
        data["op_overhead"] = self.op_overhead
        data["bytes_per_param"] = self.bytes_per_param
        if self.stage_params:
            data["stage_params"] = list(self.stage_params)
        if self.stage_output_bytes:
            data["stage_output_bytes"] = list(self.stage_output_bytes)
        if self.meta:
            data["meta"] = self.meta
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # ------------------------------------------------------------- regrouping

    def layer_units(self) -> tuple[LayerSpec, ...]:
        """The units a planner may regroup: the layers, or else the stages themselves."""
        if self.layers:
            return self.layers
        c = self.stage_costs
        return tuple(
            LayerSpec(
                name=f"stage{s}",
                forward=c.forward[s],
                backward_input=c.backward_input[s],
                backward_weight=c.backward_weight[s],
                params=self.stage_params[s] if self.stage_params else (
                    c.param_bytes[s] // GRAD_BYTES_PER_PARAM if c.param_bytes else 0),
                activation_bytes=c.activation_bytes[s] if c.activation_bytes else 0,
                output_bytes=self.stage_output_bytes[s] if self.stage_output_bytes else 0,
            )
            for s in range(c.stages)
        )

    def scale(self, seconds: float, microbatch_size: int) -> float:
        """A time measured at this profile's microbatch size, at `microbatch_size`."""
        fixed = min(self.op_overhead, seconds)
        return fixed + (seconds - fixed) * microbatch_size / self.microbatch_size

    def grouped(self, split: tuple[int, ...], *, microbatch_size: int | None = None) -> StageCosts:
        """Costs of the stages formed by taking `split[s]` consecutive units for stage s."""
        units = self.layer_units()
        if sum(split) != len(units) or any(n < 1 for n in split):
            raise CostError(f"split {list(split)} does not cover the {len(units)} layers once")
        b = microbatch_size or self.microbatch_size
        ratio = b / self.microbatch_size
        bounds = [0]
        for n in split:
            bounds.append(bounds[-1] + n)
        groups = [units[bounds[s]:bounds[s + 1]] for s in range(len(split))]
        model = dataclasses.replace(
            self.stage_costs,  # keeps the transfer and host terms
            forward=tuple(self.scale(sum(u.forward for u in g), b) for g in groups),
            backward_input=tuple(self.scale(sum(u.backward_input for u in g), b) for g in groups),
            backward_weight=tuple(self.scale(sum(u.backward_weight for u in g), b) for g in groups),
            activation_bytes=tuple(int(sum(u.activation_bytes for u in g) * ratio) for g in groups),
            optimizer=(),
            param_bytes=(),  # the regrouped stages' gradient bytes come from their params
        )
        return StageCosts(
            costs=model,
            split=tuple(split),
            params=tuple(sum(u.params for u in g) for g in groups),
            output_bytes=tuple(int(g[-1].output_bytes * ratio) for g in groups),
        )

    def own_split(self) -> StageCosts:
        """The file's stages as given (costs unscaled, step included), with the bytes each
        stage sends on (from `stage_output_bytes`, else its layers under its split)."""
        c = self.stage_costs
        n = c.stages
        out = self.stage_output_bytes or (
            tuple(self.grouped(self.split).output_bytes) if self.split else (0,) * n
        )
        params = self.stage_params or (tuple(self.grouped(self.split).params) if self.split else (0,) * n)
        return StageCosts(costs=c, split=self.split, params=tuple(params), output_bytes=tuple(out))

    def as_logged(self, *, microbatch_size: int | None = None) -> StageCosts:
        """The per-stage costs exactly as the file gives them (its own split), at
        `microbatch_size`, without the optimizer step (as for regrouped stages)."""
        own = self.own_split()
        c = self.stage_costs
        b = microbatch_size or self.microbatch_size
        ratio = b / self.microbatch_size
        out, params = own.output_bytes, own.params
        model = dataclasses.replace(
            c,  # keeps the transfer and host terms
            forward=tuple(self.scale(v, b) for v in c.forward),
            backward_input=tuple(self.scale(v, b) for v in c.backward_input),
            backward_weight=tuple(self.scale(v, b) for v in c.backward_weight),
            activation_bytes=tuple(int(a * ratio) for a in c.activation_bytes),
            optimizer=(),  # as for regrouped stages, so plans compare like with like
        )
        return StageCosts(costs=model, split=self.split, params=tuple(params),
                          output_bytes=tuple(int(o * ratio) for o in out))


GRAD_BYTES_PER_PARAM = 4
"""Bytes per parameter a data-parallel gradient reduction moves (fp32 gradients)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StageCosts:
    """Costs of one concrete split at one microbatch size, ready for the simulator."""

    costs: CostModel
    split: tuple[int, ...]
    params: tuple[int, ...]
    """Parameters per stage."""
    output_bytes: tuple[int, ...]
    """Bytes per microbatch each stage sends to the next."""

    def stage_graph(self) -> StageGraph:
        """A chain whose activations carry their byte counts, so transfers are timed."""
        n = self.costs.stages
        values = tuple(
            StageValue(
                name=f"act{s}",
                producer=s,
                consumers=(s + 1,),
                spec=TensorSpec(name=f"act{s}", shape=(max(self.output_bytes[s], 0),), dtype="uint8",
                                bytes=max(self.output_bytes[s], 0)),
            )
            for s in range(n - 1)
        )
        acts = self.costs.activation_bytes
        grads = tuple(GRAD_BYTES_PER_PARAM * p for p in self.params) if any(self.params) else ()
        return StageGraph(num_stages=n, values=values, activation_bytes=acts, param_bytes=grads)


def _layer(entry: dict, index: int, source: str) -> LayerSpec:
    try:
        forward = float(entry["F"])
        if "I" in entry and "W" in entry:
            i_cost, w_cost = float(entry["I"]), float(entry["W"])
        else:
            b_cost = float(entry.get("B", 2.0 * forward))
            i_cost = w_cost = b_cost / 2
        layer = LayerSpec(
            name=str(entry.get("name", f"layer{index}")),
            forward=forward,
            backward_input=i_cost,
            backward_weight=w_cost,
            params=int(entry.get("params", 0)),
            activation_bytes=int(entry.get("activation_bytes", 0)),
            output_bytes=int(entry.get("output_bytes", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CostError(f"{source}: layers[{index}] needs numbers F and I, W or B ({exc})") from None
    if min(layer.forward, layer.backward_input, layer.backward_weight) < 0 or not math.isfinite(layer.total):
        raise CostError(f"{source}: layers[{index}] ({layer.name}) has a negative or infinite time")
    return layer


def _stage_count(data: dict, layers: tuple[LayerSpec, ...]) -> int | None:
    for key in ("F", "I", "W", "B"):
        if isinstance(data.get(key), list):
            return len(data[key])
    if data.get("split"):
        return len(data["split"])
    return len(layers) or None


_PROFILE_KEYS = ("layers", "split", "stage_output_bytes")


def costs_and_graph(spec: str | None, stages: int) -> tuple[CostModel, StageGraph | None]:
    """The costs `spec` names (a JSON file, inline `F=1,...`, or None for unit costs) and,
    for a profile file, the chain graph with its stages' transfer bytes."""
    if spec is None or not (spec.endswith(".json") or Path(spec).is_file()):
        return CostModel.load(spec, stages), None
    data = read_costs_json(spec)
    if not isinstance(data, dict) or not any(key in data for key in _PROFILE_KEYS):
        return CostModel.load(spec, stages), None
    own = CostProfile.from_dict(data, source=spec).own_split()
    if own.costs.stages != stages:
        return CostModel.load(spec, stages), None  # CostModel names the mismatch
    return own.costs, own.stage_graph()

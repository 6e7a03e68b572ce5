"""The cost model the simulator times programs with.

Costs are per stage: forward F, backward-for-inputs I and backward-for-weights W
(a full backward B costs I + W). Transfers cost latency + bytes / bandwidth.
They come inline (`F=1,I=1,W=1`), from a JSON file, or from `ppc profile`.

JSON format (scalars apply to every stage; lists give one value per stage)::

    {"unit": "s", "F": [..], "I": [..], "W": [..],      # or "B" instead of I and W
     "comm": {"latency": 1e-5, "bandwidth": 2.0e10,    # seconds, bytes per second
              "post": 2e-4},                           # rank time to post one group of P2P ops
     "activation_bytes": [..], "weight_share": 0.5,
     "step": [..],                                     # optimizer step (clip + AdamW) per stage
     "host": {"cores": 1.7, "threads": 1},             # ranks share `cores` CPUs (CPU runs)
     "overlap": 0.8,                                   # overlapped F&B ops: factor (or {"time": t})
     "collective": {"latency": 5e-5, "bandwidth": 1e10},  # DP gradient reduction (default: comm's)
     "param_bytes": [..]}                              # gradient bytes per stage (DP reduction)

`host` matters for CPU runs where every rank is a process on one machine: when the ranks
that are computing want more cores than there are, they share them and each op slows
down in proportion (processor sharing). Leave it out when each rank has its own device.

`collective` times the gradient reduction across D pipeline replicas (data parallelism)
as a ring: an all-reduce of n bytes takes 2 (D-1)/D n / bandwidth + 2 (D-1) latency, a
reduce-scatter (ZeRO-1) half of that. Without it the point-to-point `comm` terms stand
in. `param_bytes` gives the bytes each stage reduces when the stage graph does not.

Every key and value is checked against the schema in ppc/costs_schema.py (unknown keys,
non-finite or negative numbers, lists of the wrong length, wrong shapes) before use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ppc.costs_schema import INLINE_KEYS, MAX_TIME, check_costs, closest_key
from ppc.errors import CostError
from ppc.inputs import read_json
from ppc.ir import ops
from ppc.ir.ops import OpKind

_COLLECTIVE_KEYS = ("latency", "bandwidth")


def read_costs_json(path: str | Path) -> dict:
    """A costs file's JSON checked against the schema, or one CostError line (missing or
    unreadable file, bad UTF-8 or JSON with its position, the path of a bad field)."""
    return check_costs(read_json(path, error=CostError, what="costs file"), str(path))


@dataclass(frozen=True, slots=True, kw_only=True)
class CostModel:
    forward: tuple[float, ...]
    """Per-stage forward time."""
    backward_input: tuple[float, ...]
    """Per-stage time of I (gradients for the stage's inputs)."""
    backward_weight: tuple[float, ...]
    """Per-stage time of W (gradients for the stage's weights)."""
    latency: float = 0.0
    """Fixed time per message."""
    bandwidth: float = math.inf
    """Bytes per time unit; inf means transfers cost only the latency."""
    activation_bytes: tuple[int, ...] = field(default=())
    """Per stage, activation bytes one microbatch keeps alive for backward (empty: unknown)."""
    weight_share: float = 0.5
    """Share of a microbatch's activations that I keeps alive for W."""
    unit: str = "units"
    optimizer: tuple[float, ...] = field(default=())
    """Per stage, time of the optimizer step (clipping + AdamW) for its parameters (empty: 0)."""
    post: float = 0.0
    """Rank time spent posting one group of adjacent sends/receives (CPU work, not transfer)."""
    cores: float | None = None
    """CPU cores all ranks share (one host, CPU run), effective: `ppc profile --ranks` fits
    it to a calibration run, below the physical count when the OS loses time switching
    ranks; None: every rank has its own device."""
    threads: int = 1
    """Cores one computing rank keeps busy (its intra-op threads), when `cores` is set."""
    overlap: float = 1.0
    """An overlapped op (a forward and a backward run as one unit, DualPipeV) takes this
    factor times the sum of its parts (1: no gain unless measured)."""
    overlap_time: float | None = None
    """Or this fixed time per overlapped op, when given."""
    collective_latency: float | None = None
    """Per-hop latency of the ring collectives that reduce gradients across pipeline
    replicas (None: `latency`)."""
    collective_bandwidth: float | None = None
    """Per-link bytes per time unit of those collectives (None: `bandwidth`)."""
    param_bytes: tuple[int, ...] = field(default=())
    """Per stage, gradient bytes one data-parallel reduction moves (empty: the stage
    graph's, else 0)."""

    def __post_init__(self) -> None:
        n = len(self.forward)
        if len(self.backward_input) != n or len(self.backward_weight) != n:
            raise CostError("costs: F, I and W must give one value per stage")
        for name, values in (("F", self.forward), ("I", self.backward_input), ("W", self.backward_weight)):
            bad = [v for v in values if not 0 <= v <= MAX_TIME]
            if bad:
                raise CostError(f"costs: {name} must be in [0, {MAX_TIME:g}], got {bad[0]!r}")
        if not (0 <= self.latency <= MAX_TIME) or not self.bandwidth > 0:
            raise CostError(f"costs: need latency >= 0 and bandwidth > 0, got {self.latency!r}, {self.bandwidth!r}")
        if not 0.0 <= self.weight_share <= 1.0:
            raise CostError(f"costs: weight_share must be in [0, 1], got {self.weight_share!r}")
        if self.optimizer and len(self.optimizer) != n:
            raise CostError(f"costs: step has {len(self.optimizer)} values for {n} stages")
        if any(not 0 <= v <= MAX_TIME for v in self.optimizer):
            raise CostError(f"costs: step must be in [0, {MAX_TIME:g}], got {self.optimizer!r}")
        if self.post < 0 or not math.isfinite(self.post):
            raise CostError(f"costs: post must be finite and >= 0, got {self.post!r}")
        if self.cores is not None and not self.cores > 0 or self.threads < 1:
            raise CostError(f"costs: host needs cores > 0 and threads >= 1, got {self.cores!r}, {self.threads!r}")
        if not (self.overlap > 0 and math.isfinite(self.overlap)) or (
                self.overlap_time is not None and not (self.overlap_time >= 0 and math.isfinite(self.overlap_time))):
            raise CostError(f"costs: overlap needs a factor > 0 or a time >= 0, got "
                            f"{self.overlap!r}, {self.overlap_time!r}")
        if self.activation_bytes and len(self.activation_bytes) != n:
            raise CostError(f"costs: activation_bytes has {len(self.activation_bytes)} values for {n} stages")
        if self.collective_latency is not None and not 0 <= self.collective_latency < math.inf:
            raise CostError(f"costs: collective latency must be finite and >= 0, got {self.collective_latency!r}")
        if self.collective_bandwidth is not None and not self.collective_bandwidth > 0:
            raise CostError(f"costs: collective bandwidth must be > 0, got {self.collective_bandwidth!r}")
        if self.param_bytes and len(self.param_bytes) != n:
            raise CostError(f"costs: param_bytes has {len(self.param_bytes)} values for {n} stages")
        if any(b < 0 for b in self.param_bytes):
            raise CostError(f"costs: param_bytes must be >= 0, got {min(self.param_bytes)!r}")

    @property
    def stages(self) -> int:
        return len(self.forward)

    def backward(self, stage: int) -> float:
        return self.backward_input[stage] + self.backward_weight[stage]

    def duration(self, kind: OpKind | str, stage: int) -> float:
        """Time of a compute op of `kind` (an op-table row or its name) on `stage`: the
        row's cost rule."""
        if isinstance(kind, str):
            kind = ops.get(kind)
        if kind.cost is None:
            raise ValueError(f"not a compute kind: {kind.name!r}")
        return kind.cost(self, stage)

    def overlapped(self, parts_time: float) -> float:
        """Time of an overlapped op whose parts alone would take `parts_time`."""
        return self.overlap_time if self.overlap_time is not None else self.overlap * parts_time

    def overlapped_duration(self, kind: OpKind, parts) -> float:
        """Time of an overlapped op of `kind` with these (kind, stage, mb) parts."""
        return kind.cost(self, parts)

    def step(self, stages) -> float:
        """Time of the optimizer step of a rank that owns `stages`."""
        return sum(self.optimizer[s] for s in stages) if self.optimizer else 0.0

    def transfer(self, nbytes: int) -> float:
        return self.latency + (nbytes / self.bandwidth if nbytes else 0.0)

    def all_reduce(self, nbytes: int, replicas: int) -> float:
        """Time of a ring all-reduce of `nbytes` across `replicas` ranks: a reduce-scatter
        then an all-gather, each D - 1 steps of n / D bytes (0 with one replica)."""
        return 2.0 * self.reduce_scatter(nbytes, replicas)

    def reduce_scatter(self, nbytes: int, replicas: int) -> float:
        """Time of a ring reduce-scatter (or all-gather) of `nbytes` across `replicas`
        ranks: (D-1)/D n / bandwidth + (D-1) latency."""
        if replicas <= 1:
            return 0.0
        latency = self.latency if self.collective_latency is None else self.collective_latency
        bandwidth = self.bandwidth if self.collective_bandwidth is None else self.collective_bandwidth
        steps = replicas - 1
        return steps * latency + (steps / replicas * nbytes / bandwidth if nbytes else 0.0)

    def shares_cores(self, ranks: int) -> bool:
        """Whether `ranks` computing at once would want more cores than the host has."""
        return self.cores is not None and ranks * self.threads > self.cores

    @classmethod
    def uniform(cls, stages: int, *, F: float = 1.0, I: float = 1.0, W: float = 1.0) -> CostModel:
        return cls(forward=(F,) * stages, backward_input=(I,) * stages, backward_weight=(W,) * stages)

    @classmethod
    def from_dict(cls, data: dict, stages: int, *, source: str = "costs") -> CostModel:
        """Build from the JSON form; scalars broadcast, lists must have one value per stage."""
        check_costs(data, source, stages)

        def per_stage(key: str) -> tuple[float, ...] | None:
            if key not in data:
                return None
            value = data[key]
            if isinstance(value, (int, float)):
                return (float(value),) * stages
            if isinstance(value, list) and len(value) == stages:
                return tuple(float(v) for v in value)
            got = len(value) if isinstance(value, list) else type(value).__name__
            raise CostError(f"{source}: {key!r} needs a number or {stages} values (one per stage), got {got}")

        forward = per_stage("F") or (1.0,) * stages
        i_costs, w_costs, b_costs = per_stage("I"), per_stage("W"), per_stage("B")
        if i_costs is None and w_costs is None:
            b_costs = b_costs or tuple(2.0 * f for f in forward)
            i_costs = tuple(b / 2 for b in b_costs)
            w_costs = i_costs
        elif i_costs is None or w_costs is None:
            if b_costs is None:
                raise CostError(f"{source}: give both I and W, or B")
            given = i_costs if i_costs is not None else w_costs
            other = tuple(b - g for b, g in zip(b_costs, given))
            i_costs, w_costs = (given, other) if i_costs is not None else (other, given)
        comm = data.get("comm", {})
        host = data.get("host", {})
        cores = host.get("cores", data.get("cores"))
        acts = data.get("activation_bytes", [])
        if isinstance(acts, (int, float)):
            acts = [acts] * stages
        return cls(
            forward=forward,
            backward_input=i_costs,
            backward_weight=w_costs,
            latency=float(comm.get("latency", data.get("latency", 0.0))),
            bandwidth=float(comm.get("bandwidth", data.get("bandwidth", math.inf))),
            activation_bytes=tuple(int(a) for a in acts),
            weight_share=float(data.get("weight_share", 0.5)),
            unit=str(data.get("unit", "units")),
            optimizer=per_stage("step") or (),
            post=float(comm.get("post", data.get("post", 0.0))),
            cores=None if cores is None else float(cores),
            threads=int(host.get("threads", data.get("threads", 1))),
            **_overlap_terms(data.get("overlap"), data.get("overlap_time"), source),
            **_collective_terms(data, source),
            param_bytes=_param_bytes(data.get("param_bytes"), stages, source),
        )

    @classmethod
    def parse_inline(cls, text: str, stages: int) -> CostModel:
        """Parse `F=1,I=1,W=1` (also B=, latency=, bandwidth=, weight_share=, step=, post=,
        cores=, threads=, collective_latency=, collective_bandwidth=, param_bytes=)."""
        data: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep:
                raise CostError(f"--costs: cannot read {part[:40]!r}; expected KEY=NUMBER, e.g. F=1,I=1,W=1")
            if key not in INLINE_KEYS:
                raise CostError(f"--costs: unknown key {key[:40]!r}{closest_key(key, INLINE_KEYS)}")
            try:
                data[key] = float(value)
            except ValueError:
                raise CostError(f"--costs: {key} needs a number, got {value.strip()[:40]!r}") from None
        collective = {key: data.pop(f"collective_{key}") for key in _COLLECTIVE_KEYS if f"collective_{key}" in data}
        if collective:
            data["collective"] = collective
        return cls.from_dict(data, stages, source="--costs")

    @classmethod
    def load(cls, spec: str | None, stages: int) -> CostModel:
        """From a JSON file path, an inline string, or the uniform default (None)."""
        if spec is None:
            return cls.uniform(stages)
        if spec.endswith(".json") or Path(spec).is_file() or Path(spec).is_dir():
            return cls.from_dict(read_costs_json(spec), stages, source=spec)
        return cls.parse_inline(spec, stages)

    def to_dict(self) -> dict:
        data = asdict(self)
        out = {
            "unit": self.unit,
            "F": list(self.forward),
            "I": list(self.backward_input),
            "W": list(self.backward_weight),
            "comm": {"latency": self.latency, "bandwidth": self.bandwidth if math.isfinite(self.bandwidth) else 1e300},
            "activation_bytes": list(data["activation_bytes"]),
            "weight_share": self.weight_share,
        }
        if self.optimizer:
            out["step"] = list(self.optimizer)
        if self.post:
            out["comm"]["post"] = self.post
        if self.cores is not None:
            out["host"] = {"cores": self.cores, "threads": self.threads}
        if self.overlap_time is not None:
            out["overlap"] = {"time": self.overlap_time}
        elif self.overlap != 1.0:
            out["overlap"] = self.overlap
        bandwidth = self.collective_bandwidth
        if bandwidth is not None and not math.isfinite(bandwidth):
            bandwidth = 1e300  # as "comm" writes it: JSON has no inf
        collective = {key: value for key, value in (("latency", self.collective_latency),
                                                     ("bandwidth", bandwidth)) if value is not None}
        if collective:
            out["collective"] = collective
        if self.param_bytes:
            out["param_bytes"] = list(self.param_bytes)
        return out


def _overlap_terms(value, time, source: str) -> dict:
    """`overlap`: a factor (0.8), or {"factor": 0.8} / {"time": 1.5}; `overlap_time` inline."""
    terms: dict = {}
    if isinstance(value, dict):
        unknown = set(value) - {"factor", "time"}
        if unknown:
            raise CostError(f"{source}: overlap takes 'factor' or 'time', not {sorted(unknown)}")
        value, time = value.get("factor"), value.get("time", time)
    if value is not None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CostError(f"{source}: overlap needs a number (a factor), got {value!r}")
        terms["overlap"] = float(value)
    if time is not None:
        if not isinstance(time, (int, float)) or isinstance(time, bool):
            raise CostError(f"{source}: overlap time needs a number, got {time!r}")
        terms["overlap_time"] = float(time)
    return terms


def _finite(value, where: str, source: str, *, positive: bool = False) -> float:
    """A JSON number that is finite and >= 0 (> 0 with `positive`), or one CostError line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CostError(f"{source}: {where} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise CostError(f"{source}: {where} must be finite and {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _collective_terms(data: dict, source: str) -> dict:
    """`collective`: {"latency": s, "bandwidth": B/s}, both optional (default: comm's)."""
    value = data.get("collective")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CostError(f"{source}: collective must be an object {{\"latency\": .., \"bandwidth\": ..}}, got {value!r}")
    unknown = sorted(set(value) - set(_COLLECTIVE_KEYS))
    if unknown:
        raise CostError(f"{source}: collective: unknown key {unknown[0]!r} (known keys: latency, bandwidth)")
    terms = {}
    if "latency" in value:
        terms["collective_latency"] = _finite(value["latency"], "collective.latency", source)
    if "bandwidth" in value:
        bandwidth = value["bandwidth"]  # inf: only the latency terms count, as for "comm"
        terms["collective_bandwidth"] = math.inf if bandwidth == math.inf else _finite(
            bandwidth, "collective.bandwidth", source, positive=True)
    return terms


def _param_bytes(value, stages: int, source: str) -> tuple[int, ...]:
    """`param_bytes`: one byte count for every stage, or a list of one per stage."""
    if value is None:
        return ()
    if not isinstance(value, list):
        return (int(_finite(value, "param_bytes", source)),) * stages
    if len(value) != stages:
        raise CostError(f"{source}: 'param_bytes' needs a number or {stages} values (one per stage), got {len(value)}")
    return tuple(int(_finite(v, f"param_bytes[{i}]", source)) for i, v in enumerate(value))

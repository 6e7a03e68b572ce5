"""Per-stage and per-layer costs from an opt_prime pipeline log (the case-study format).

The log holds, for every rank and step, the forward time of each (partial) layer on
that rank's stage, summed over the step's microbatches::

    [rank:7 stage:7] transformer-block(module) forward time (no send/recv) - step 2
      layer[13]: total=9.994ms, ops=32, avg/op=0.312ms
      layer[lm_head]: total=131.423ms, ops=32, avg/op=4.107ms
    | epoch   1 |     1/  323 batches | lr 0.00 | ms/batch 7289.55 | loss 21.49 | ...

Ranks print concurrently, so two headers can share a line and their entries then
alternate on the following lines; the parser reads the text as one token stream and
deals the entries of such a group of headers round-robin. Stage boundaries fall inside
layers (``layer[1]`` is on stage 0 with 7 ops per microbatch and on stage 1 with 1), so
a layer's cost is the sum of its pieces. Only module calls are timed (no attention
core, no send/recv); `derive_costs` can add a per-layer allowance for the rest.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from ppc.errors import CostError

_HEADER = re.compile(r"\[rank:(\d+) stage:(\d+)\] transformer-block\(module\) forward time[^\n]*?- step (\d+)")
_ENTRY = re.compile(r"layer\[([\w.]+)\]: total=([\d.]+)ms, ops=(\d+), avg/op=([\d.]+)ms")
_STEP = re.compile(r"\|\s*epoch\s+\d+\s*\|\s*(\d+)/\s*\d+ batches.*?ms/batch\s+([\d.]+)")
_SETTING = re.compile(r"^> (GAS|GBS|MBS|PP|TP|DP): (\d+)", re.MULTILINE)
_PARAMS = re.compile(r"Total parameters in model: ([\d,]+)")

EMBED = "embed"
HEAD = "lm_head"


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerTime:
    """One `layer[NAME]` entry: a layer's piece on one stage, summed over a step."""

    layer: str
    """`embed`, a decoder layer index (`"0"`..), or `lm_head`."""
    total_ms: float
    ops: int
    """Module calls timed, over all microbatches of the step."""
    avg_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StageStep:
    """The forward times one stage logged for one step."""

    rank: int
    stage: int
    step: int
    layers: tuple[LayerTime, ...]

    @property
    def total_ms(self) -> float:
        return sum(entry.total_ms for entry in self.layers)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRun:
    """Everything `parse_log` reads from one log."""

    stages: int
    microbatches: int
    """Microbatches per step (the log's GAS)."""
    microbatch_size: int
    total_params: int
    records: tuple[StageStep, ...]
    step_ms: tuple[float, ...]
    """Wall time of each step in order, as the log's `ms/batch` (step 1 includes warm-up)."""

    def stage_steps(self, stage: int) -> tuple[StageStep, ...]:
        return tuple(sorted((r for r in self.records if r.stage == stage), key=lambda r: r.step))

    def steps(self) -> tuple[int, ...]:
        return tuple(sorted({r.step for r in self.records}))

    def layer_order(self) -> tuple[str, ...]:
        """Layer names in model order: embed, 0, 1, .., lm_head."""
        names = {e.layer for r in self.records for e in r.layers}
        return tuple(sorted(names, key=_layer_rank))


def _layer_rank(name: str) -> tuple[int, int]:
    if name == EMBED:
        return (0, 0)
    if name.isdigit():
        return (1, int(name))
    return (2, 0)


def parse_log(text: str, *, source: str = "log") -> LogRun:
    """Read the per-stage forward times, step times and run settings of one log."""
    tokens = sorted(
        [(m.start(), "header", m) for m in _HEADER.finditer(text)]
        + [(m.start(), "entry", m) for m in _ENTRY.finditer(text)]
    )
    if not tokens:
        raise CostError(f"{source}: no per-layer forward times found (not an opt_prime log?)")
    blocks: list[tuple[tuple[int, int, int], list[LayerTime]]] = []
    group: list[int] = []  # indices into blocks of the headers printed back to back
    dealt = 0
    previous = None
    for _, kind, match in tokens:
        if kind == "header":
            if previous != "header":
                group, dealt = [], 0
            group.append(len(blocks))
            blocks.append(((int(match[1]), int(match[2]), int(match[3])), []))
        else:
            if not group:
                raise CostError(f"{source}: layer entry {match[0]!r} before any stage header")
            blocks[group[dealt % len(group)]][1].append(
                LayerTime(layer=match[1], total_ms=float(match[2]), ops=int(match[3]), avg_ms=float(match[4]))
            )
            dealt += 1
        previous = kind
    records = tuple(
        StageStep(rank=rank, stage=stage, step=step, layers=tuple(entries))
        for (rank, stage, step), entries in blocks
    )
    settings = {key: int(value) for key, value in _SETTING.findall(text)}
    params = _PARAMS.search(text)
    stages = settings.get("PP", 1 + max(r.stage for r in records))
    microbatches = settings.get("GAS")
    if microbatches is None:
        raise CostError(f"{source}: no '> GAS: N' line, so the microbatch count is unknown")
    step_ms = tuple(float(ms) for _, ms in sorted(_STEP.findall(text), key=lambda t: int(t[0])))
    return LogRun(
        stages=stages,
        microbatches=microbatches,
        microbatch_size=settings.get("MBS", 1),
        total_params=int(params[1].replace(",", "")) if params else 0,
        records=records,
        step_ms=step_ms,
    )


def read_log(path: str | Path) -> LogRun:
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise CostError(f"{path}: no such log file") from None
    return parse_log(text, source=str(path))


def stage_forward_ms(run: LogRun, *, skip_steps: int = 1) -> tuple[float, ...]:
    """Per stage, the median over steps (after `skip_steps` warm-up steps) of the
    forward time of one microbatch, in ms."""
    out = []
    for stage in range(run.stages):
        totals = [r.total_ms for r in run.stage_steps(stage) if r.step > skip_steps]
        if not totals:
            raise CostError(f"log: stage {stage} has no timed step after the first {skip_steps}")
        out.append(statistics.median(totals) / run.microbatches)
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerCost:
    """One whole layer's forward time per microbatch, and where its pieces ran."""

    name: str
    forward_ms: float
    ops_per_microbatch: int
    """Module calls of the whole layer per microbatch (8 for a Llama decoder layer)."""
    pieces: tuple[tuple[int, int], ...]
    """(stage, module calls per microbatch) of each piece, in stage order."""


def layer_costs(run: LogRun, *, skip_steps: int = 1) -> tuple[LayerCost, ...]:
    """Per layer in model order, the median over steps of its summed pieces, per microbatch."""
    per_step: dict[str, dict[int, float]] = {}
    pieces: dict[str, dict[int, int]] = {}
    for record in run.records:
        if record.step <= skip_steps:
            continue
        for entry in record.layers:
            steps = per_step.setdefault(entry.layer, {})
            steps[record.step] = steps.get(record.step, 0.0) + entry.total_ms
            pieces.setdefault(entry.layer, {})[record.stage] = entry.ops // run.microbatches
    return tuple(
        LayerCost(
            name=name,
            forward_ms=statistics.median(per_step[name].values()) / run.microbatches,
            ops_per_microbatch=sum(pieces[name].values()),
            pieces=tuple(sorted(pieces[name].items())),
        )
        for name in run.layer_order()
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaShape:
    """The shape facts the log leaves out, for parameter and activation estimates.

    Defaults are Llama-3.2-1B; `seq_len` and `act_bytes` (bytes per activation element)
    are assumptions: the log states neither.
    """

    hidden: int = 2048
    intermediate: int = 8192
    heads: int = 32
    kv_heads: int = 8
    vocab: int = 128256
    seq_len: int = 512
    act_bytes: int = 2

    def layer_params(self) -> int:
        head_dim = self.hidden // self.heads
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * head_dim
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def layer_activation_bytes(self, microbatch_size: int) -> int:
        """Kept for backward by one decoder layer: 34*s*h + 5*a*s^2 elements of 2 bytes
        (Korthikanti et al. 2022, no recomputation), scaled to `act_bytes`."""
        s, b = self.seq_len, microbatch_size
        return int((34 * s * b * self.hidden + 5 * self.heads * s * s * b) * self.act_bytes / 2)

    def hidden_bytes(self, microbatch_size: int) -> int:
        return self.seq_len * microbatch_size * self.hidden * self.act_bytes

    def head_activation_bytes(self, microbatch_size: int) -> int:
        """Logits in `act_bytes`, their fp32 copy for the loss and its gradient."""
        return self.seq_len * microbatch_size * self.vocab * (self.act_bytes + 8)


def logged_split(layers: tuple[LayerCost, ...], stages: int) -> tuple[int, ...]:
    """Layers per stage when each layer goes to the stage that ran most of its ops."""
    counts = [0] * stages
    for layer in layers:
        home = max(layer.pieces, key=lambda piece: (piece[1], -piece[0]))[0]
        counts[home] += 1
    return tuple(counts)


def derive_costs(
    run: LogRun,
    *,
    skip_steps: int = 1,
    backward_factor: float = 2.0,
    scale: float = 1.0,
    shape: LlamaShape | None = None,
    latency: float = 2e-5,
    bandwidth: float = 1.2e10,
    source: str = "log",
):
    """A CostProfile (seconds) from a log: forward as logged times `scale`, B =
    `backward_factor` * F split evenly into I and W, per-layer costs for re-splitting."""
    from ppc.costs import CostModel
    from ppc.plan.cost_profile import CostProfile, LayerSpec

    shape = shape or LlamaShape()
    b = run.microbatch_size
    layers = layer_costs(run, skip_steps=skip_steps)
    split = logged_split(layers, run.stages)

    def spec(layer: LayerCost) -> LayerSpec:
        f = layer.forward_ms * scale / 1000
        if layer.name == EMBED:
            params, acts = shape.vocab * shape.hidden, shape.hidden_bytes(b)
        elif layer.name == HEAD:
            # the tied embedding's copy plus the final norm
            params, acts = shape.vocab * shape.hidden + shape.hidden, shape.head_activation_bytes(b)
        else:
            params, acts = shape.layer_params(), shape.layer_activation_bytes(b)
        half = backward_factor * f / 2
        return LayerSpec(name=layer.name, forward=f, backward_input=half, backward_weight=half,
                         params=params, activation_bytes=acts,
                         output_bytes=0 if layer.name == HEAD else shape.hidden_bytes(b))

    specs = tuple(spec(layer) for layer in layers)
    forward = tuple(ms * scale / 1000 for ms in stage_forward_ms(run, skip_steps=skip_steps))
    half = tuple(backward_factor * f / 2 for f in forward)
    bounds = [0]
    for n in split:
        bounds.append(bounds[-1] + n)
    acts = tuple(sum(x.activation_bytes for x in specs[bounds[s]:bounds[s + 1]]) for s in range(run.stages))
    timed = [ms for step, ms in enumerate(run.step_ms, start=1) if step > skip_steps]
    return CostProfile(
        stage_costs=CostModel(forward=forward, backward_input=half, backward_weight=half,
                              latency=latency, bandwidth=bandwidth, activation_bytes=acts, unit="s"),
        layers=specs,
        split=split,
        microbatch_size=b,
        seq_len=shape.seq_len,
        meta={
            "source": source,
            "microbatches": run.microbatches,
            "measured_step_s": statistics.median(timed) / 1000 if timed else None,
            "forward": f"median over steps > {skip_steps} of the logged module times, times {scale:g}",
            "backward": f"B = {backward_factor:g} * F, I = W = B / 2 (assumed; the log has no backward times)",
            "comm": f"latency {latency:g} s, bandwidth {bandwidth:g} B/s (assumed, PCIe-class)",
            "activations": f"seq_len {shape.seq_len}, {shape.act_bytes}-byte activations (assumed)",
        },
    )

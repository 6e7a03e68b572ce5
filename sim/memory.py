"""Peak activation memory per rank.

A microbatch's activations on a stage are alive from its F until its last backward op
there (B, or W when the backward is split). In units, each alive (stage, microbatch)
counts 1. In bytes (when the costs know per-stage activation bytes), F allocates the
stage's bytes, I frees all but the `weight_share` W still needs, and W frees the rest.
A (stage, microbatch) that has an op which `drops` a phase (recompute, RF, drops the
forward's) releases what it holds right after the op that computes that phase, and the
dropping op's own effect holds it again until the backward frees it.
Each rank runs its ops in program order, so peaks do not depend on timing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppc.costs import CostModel
from ppc.ir import ops
from ppc.ir.order import ComputeOrder
from ppc.ir.program import Program
from ppc.ir.program import codes as program_codes


@dataclass(frozen=True, slots=True, kw_only=True)
class RankMemory:
    peak_activations: int
    """Most (stage, microbatch) activation sets alive at once."""
    peak_bytes: int | None
    """Peak activation bytes, or None when the costs give no activation sizes."""


def rank_memory(program: Program, costs: CostModel, *, codes: list[int] | None = None) -> tuple[RankMemory, ...]:
    """Peak activations per rank of a program; `codes` (op codes of all instructions,
    rank-major) saves a pass."""
    code = codes if codes is not None else program_codes(i for row in program.instructions for i in row)
    dropping = _dropping_codes()
    peaks, g = [], 0
    for row in program.instructions:
        mine = code[g:g + len(row)]
        peaks.append(_peak(_units(zip(mine, row)), costs, dropping=not dropping.isdisjoint(mine)))
        g += len(row)
    return tuple(peaks)


def _units(pairs):
    """(code, stage, mb) of each instruction, an overlapped op as its parts in order."""
    for c, instr in pairs:
        if instr.parts:
            yield from ((p.op.code, p.stage, p.mb) for p in instr.parts)
        else:
            yield c, instr.stage, instr.mb


def order_memory(order: ComputeOrder, costs: CostModel) -> tuple[RankMemory, ...]:
    """Peak activations per rank of a compute order (communication changes no memory)."""
    dropping = _dropping_codes()
    return tuple(_peak(((p.kind.code, p.stage, p.mb) for a in row for p in (a.parts or (a,))), costs,
                       dropping=not dropping.isdisjoint(a.kind.code for a in row))
                 for row in order.compute)


def _dropping_codes() -> frozenset[int]:
    """Codes of the ops that make their (stage, microbatch) drop activations (`drops`)."""
    return frozenset(k.code for k in ops.table() if k.drops)


def _peak(row, costs: CostModel, *, dropping: bool = False) -> RankMemory:
    """Walk one rank's (code, stage, mb) units applying each op's memory effect (op
    table); `dropping`: the row holds an op that `drops` (then pairs are tracked)."""
    if dropping:
        row = list(row)
        return _peak_dropping(row, costs, _dropped(row, ops.table()), ops.table())
    sizes = costs.activation_bytes
    memory = ops.Codes.get().memory
    sets = [m.sets for m in memory]
    fraction = [m.whole + m.share * costs.weight_share for m in memory]
    alive = peak = 0
    live = peak_b = 0.0
    for c, stage, _ in row:
        d = sets[c]
        if d:
            alive += d
            if alive > peak:  # noqa: PLR1730 (hot loop)
                peak = alive
        if sizes:
            f = fraction[c]
            if f:
                live += f * sizes[stage]
                if live > peak_b:  # noqa: PLR1730
                    peak_b = live
    return RankMemory(peak_activations=peak, peak_bytes=round(peak_b) if sizes else None)


def _dropped(row, kinds) -> dict[tuple[int, int], frozenset[str]]:
    """{(stage, mb): phases after which it keeps nothing} for the pairs of one rank that
    have an op which `drops` phases."""
    dropped: dict[tuple[int, int], frozenset[str]] = {}
    for c, stage, mb in row:
        if kinds[c].drops:
            dropped[(stage, mb)] = dropped.get((stage, mb), frozenset()) | frozenset(kinds[c].drops)
    return dropped


def _peak_dropping(row, costs: CostModel, dropped, kinds) -> RankMemory:
    """`_peak` for a rank where some pairs drop their activations: what such a pair holds
    is tracked, and released after the op that computes a dropped phase."""
    sizes = costs.activation_bytes
    sets = [k.memory.sets for k in kinds]
    fraction = [k.memory.whole + k.memory.share * costs.weight_share for k in kinds]
    phases = [frozenset(k.phases) for k in kinds]
    held = dict.fromkeys(dropped, (0, 0.0))
    alive = peak = 0
    live = peak_b = 0.0
    for c, stage, mb in row:
        d, f = sets[c], fraction[c] * sizes[stage] if sizes else 0.0
        alive += d
        live += f
        peak, peak_b = max(peak, alive), max(peak_b, live)
        pair = (stage, mb)
        if pair in held:
            if phases[c] & dropped[pair]:  # released right after this op
                alive -= held[pair][0] + d
                live -= held[pair][1] + f
                held[pair] = (0, 0.0)
            else:
                held[pair] = (held[pair][0] + d, held[pair][1] + f)
    return RankMemory(peak_activations=peak, peak_bytes=round(peak_b) if sizes else None)

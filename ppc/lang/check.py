"""Checks a compute order: every op once, on its stage's rank, F before I/B, I before W.

Requires a ComputeOrder (origins optional). Guarantees nothing on success; on failure
raises ScheduleError naming rank, stage and microbatch, positioned at the .ppc line that
produced the op (or at `missing_pos` for an op that was never produced).
"""

from __future__ import annotations

from ppc.actions import Action, ComputeOrder, Kind
from ppc.errors import ScheduleError, SourcePos


def _where(rank: int, action: Action) -> str:
    return f"rank {rank}, stage {action.stage}, microbatch {action.mb}"


def check_order(order: ComputeOrder, *, missing_pos: SourcePos | None = None) -> None:
    """Raise ScheduleError for the first problem found (program order, rank by rank)."""
    seen: dict[tuple[Kind, int, int], tuple[int, int]] = {}  # op -> (rank, index)
    placement, stages, microbatches = order.placement, order.stages, order.microbatches
    B, I, W = Kind.B, Kind.I, Kind.W
    for rank, row in enumerate(order.compute):
        for index, action in enumerate(row):
            kind, stage, mb = action.kind, action.stage, action.mb
            # the common case inline (hundreds of thousands of ops); helpers explain failures
            ok = 0 <= stage < stages and 0 <= mb < microbatches and placement[stage] == rank
            key = (kind, stage, mb)
            if ok and key not in seen:
                need = _NEEDS.get(kind)
                mixed = (B, stage, mb) in seen if kind is I or kind is W else (
                    kind is B and (I, stage, mb) in seen)
                ok = not mixed and (need is None or (need, stage, mb) in seen)
            else:
                ok = False
            if not ok:
                pos = order.origin(rank, index)
                _check_bounds(order, rank, action, pos)
                _check_once(order, seen, rank, action, pos)
                _check_dependency(seen, rank, action, pos)
            seen[key] = (rank, index)
    _check_complete(order, seen, missing_pos)


def _check_bounds(order: ComputeOrder, rank: int, action: Action, pos: SourcePos | None) -> None:
    if not 0 <= action.stage < order.stages:
        raise ScheduleError(
            f"{_where(rank, action)}: {action} names a stage outside 0..{order.stages - 1}", pos=pos
        )
    if not 0 <= action.mb < order.microbatches:
        raise ScheduleError(
            f"{_where(rank, action)}: {action} names a microbatch outside 0..{order.microbatches - 1}",
            pos=pos,
        )
    owner = order.placement[action.stage]
    if owner != rank:
        raise ScheduleError(
            f"{_where(rank, action)}: {action} is on rank {rank} but stage {action.stage} "
            f"is placed on rank {owner}",
            pos=pos,
        )


def _line(pos: SourcePos | None) -> str:
    return f" (first at line {pos.line})" if pos is not None else ""


def _check_once(order: ComputeOrder, seen, rank: int, action: Action, pos: SourcePos | None) -> None:
    key = (action.kind, action.stage, action.mb)
    if key in seen:
        first = order.origin(*seen[key])
        raise ScheduleError(f"{_where(rank, action)}: {action} is produced twice{_line(first)}", pos=pos)
    full, split = (Kind.B, action.stage, action.mb), (Kind.I, action.stage, action.mb)
    if (action.kind == Kind.B and split in seen) or (action.kind in (Kind.I, Kind.W) and full in seen):
        raise ScheduleError(
            f"{_where(rank, action)}: {action} mixes a full backward B with split I/W "
            "for the same stage and microbatch",
            pos=pos,
        )


_NEEDS = {Kind.B: Kind.F, Kind.I: Kind.F, Kind.W: Kind.I}


def _check_dependency(seen, rank: int, action: Action, pos: SourcePos | None) -> None:
    need = _NEEDS.get(action.kind)
    if need is None or (need, action.stage, action.mb) in seen:
        return
    first = Action(stage=action.stage, kind=need, mb=action.mb)
    raise ScheduleError(
        f"{_where(rank, action)}: {action} comes before {first} on this rank", pos=pos
    )


def _check_complete(order: ComputeOrder, seen, missing_pos: SourcePos | None) -> None:
    # every op is unique, in bounds and after its dependency by now, so counting suffices
    count = {kind: 0 for kind in Kind}
    for kind, _, _ in seen:
        count[kind] += 1
    pairs = order.stages * order.microbatches
    if count[Kind.F] == pairs and count[Kind.B] + count[Kind.I] == pairs and count[Kind.W] == count[Kind.I]:
        return
    for stage in range(order.stages):
        rank = order.placement[stage]
        for mb in range(order.microbatches):
            kinds = {k for k in Kind if (k, stage, mb) in seen}
            missing = _missing_kinds(kinds)
            if missing:
                action = Action(stage=stage, kind=missing, mb=mb)
                raise ScheduleError(
                    f"{_where(rank, action)}: {action} is never produced", pos=missing_pos
                )


def _missing_kinds(kinds: set[Kind]) -> Kind | None:
    if Kind.F not in kinds:
        return Kind.F
    if Kind.I in kinds and Kind.W not in kinds:
        return Kind.W
    if Kind.B not in kinds and Kind.I not in kinds:
        return Kind.B
    return None

"""Policy schedules (zbv) timed by the list scheduler's own unit-cost model."""

from __future__ import annotations

import pytest

from ppc.errors import ScheduleError
from ppc.ir.order import Kind
from ppc.lang import load_schedule
from ppc.lang.expand import bind_params, expand
from ppc.lang.parser import parse
from ppc.lang.placement import Layout, loop, vshape
from ppc.lang.policy import run_policy


def timed(name: str, ranks: int, microbatches: int, virtual: int):
    definition = load_schedule(name).definition
    scope = bind_params(definition, ranks, microbatches, virtual, {})
    make = vshape if definition.placement.kind == "vshape" else loop
    layout = Layout.of(make(ranks, virtual), ranks)
    return run_policy(definition.body, layout=layout, microbatches=microbatches, scope=scope)


def idle_per_rank(rows) -> list[int]:
    makespan = max(t.end for row in rows for t in row)
    return [makespan - sum(t.end - t.start for t in row) for row in rows]


def peak(row, up: Kind, down: Kind) -> int:
    count = best = 0
    for t in row:
        count += (t.action.kind == up) - (t.action.kind == down)
        best = max(best, count)
    return best


@pytest.mark.parametrize(("ranks", "microbatches"), [(r, k * r) for r in range(2, 9) for k in (1, 2, 4)])
def test_zbv_bubble_is_half_of_zb_h1(ranks: int, microbatches: int) -> None:
    """Each zbv stage is half a zb_h1 stage, so idle R-1 in chunk units is half ZB-H1's bubble."""
    rows = timed("zbv", ranks, microbatches, 2)
    assert idle_per_rank(rows) == [ranks - 1] * ranks
    for row in rows:
        assert len(row) == 6 * microbatches
        assert peak(row, Kind.F, Kind.I) <= 2 * ranks
        assert peak(row, Kind.F, Kind.W) == 2 * ranks  # the `retained` limit, reached


def test_policy_order_is_deterministic() -> None:
    first = load_schedule("zbv").expand(ranks=4, microbatches=8, virtual=2)
    second = load_schedule("zbv").expand(ranks=4, microbatches=8, virtual=2)
    assert first.compute == second.compute


def test_policy_origins_point_at_the_policy_block() -> None:
    order = load_schedule("zbv").expand(ranks=2, microbatches=2)
    assert {pos.line for row in order.origins for pos in row} == {8}


def test_too_tight_limits_are_reported_not_hung() -> None:
    src = "schedule tight\npolicy {\n  prefer B, F\n  inflight <= 1\n}\n"
    with pytest.raises(ScheduleError, match="cannot make progress") as caught:
        expand(parse(src, "tight.ppc"), ranks=2, microbatches=4, virtual=2, placement_kind="v")
    assert caught.value.pos.line == 2


def test_prefer_must_match_split_backward() -> None:
    src = "schedule odd\npolicy {\n  prefer I, F\n}\n"
    with pytest.raises(ScheduleError, match="split backward"):
        expand(parse(src, "odd.ppc"), ranks=2, microbatches=2)


def test_non_split_policy_gives_1f1b_like_order() -> None:
    src = "schedule p\npolicy {\n  prefer B, F\n  inflight <= R - r\n}\n"
    order = expand(parse(src, "p.ppc"), ranks=4, microbatches=8)
    ours = load_schedule("1f1b").expand(ranks=4, microbatches=8)
    for rank in range(4):
        assert peak_kinds(order.compute[rank]) == min(4 - rank, 8)
    assert order.compute[3] == ours.compute[3]


def peak_kinds(row) -> int:
    count = best = 0
    for a in row:
        count += (a.kind == Kind.F) - (a.kind == Kind.B)
        best = max(best, count)
    return best

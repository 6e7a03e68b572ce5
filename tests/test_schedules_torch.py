"""Built-in schedules against torch.distributed.pipelining's orders and canonical formulas."""

from __future__ import annotations

from unittest import mock

import pytest
from conftest import ppc_orders

from ppc.ir.order import Action, Kind
from ppc.lang import load_schedule

schedule_visualizer = pytest.importorskip("torch.distributed.pipelining._schedule_visualizer")

GRID = [(r, k * r) for r in range(2, 9) for k in range(1, 5)]


def _multi_one_stage(name: str, ranks: int, microbatches: int):
    """A torch multi-stage schedule with one stage per rank (the visualizer insists on V >= 2)."""
    from torch.distributed.pipelining.schedules import get_schedule_class
    from torch.distributed.pipelining.stage import PipelineStage

    stage = mock.create_autospec(PipelineStage, instance=True)
    stage.group_rank, stage.group_size, stage.submod, stage.num_stages = 0, ranks, None, ranks
    schedule = get_schedule_class(name)([stage], microbatches)
    return [schedule.pipeline_order[r] for r in range(ranks)]


def torch_orders(name: str, ranks: int, microbatches: int, virtual: int | None = None):
    """torch's per-rank compute actions as strings, None and non-compute entries dropped."""
    if name in ("Interleaved1F1B", "LoopedBFS") and virtual == 1:
        ops = _multi_one_stage(name, ranks, microbatches)
    else:
        ops = schedule_visualizer.get_schedule_ops(name, ranks, microbatches, virtual)
    compute = {"F", "B", "I", "W"}
    return [
        [str(a) for a in row if a is not None and a.computation_type.value in compute]
        for row in ops
    ]


def canonical_1f1b(rank: int, ranks: int, microbatches: int) -> list[str]:
    warmup = min(ranks - rank - 1, microbatches)
    ops = [f"{rank}F{m}" for m in range(warmup)]
    for m in range(microbatches - warmup):
        ops += [f"{rank}F{warmup + m}", f"{rank}B{m}"]
    return ops + [f"{rank}B{m}" for m in range(microbatches - warmup, microbatches)]


@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_1f1b_matches_torch_except_its_broken_last_rank(ranks: int, microbatches: int) -> None:
    ours = ppc_orders("1f1b", ranks, microbatches)
    theirs = torch_orders("1F1B", ranks, microbatches)
    assert ours[:-1] == theirs[:-1]
    assert ours == [canonical_1f1b(r, ranks, microbatches) for r in range(ranks)]


@pytest.mark.parametrize(("ranks", "microbatches"), [(2, 1), (4, 2), (4, 3), (5, 7), (3, 10)])
def test_1f1b_canonical_when_m_is_not_a_multiple(ranks: int, microbatches: int) -> None:
    ours = ppc_orders("1f1b", ranks, microbatches)
    assert ours == [canonical_1f1b(r, ranks, microbatches) for r in range(ranks)]


def test_torch_1f1b_last_rank_anomaly_is_still_there() -> None:
    """Documents why the last rank is compared to the formula only (docs/language.md)."""
    last = torch_orders("1F1B", 4, 8)[3]
    assert "3F0" not in last and "3F8" in last


@pytest.mark.parametrize("virtual", [1, 2, 3, 4])
@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_interleaved_1f1b_matches_torch(ranks: int, microbatches: int, virtual: int) -> None:
    ours = ppc_orders("interleaved_1f1b", ranks, microbatches, virtual)
    assert ours == torch_orders("Interleaved1F1B", ranks, microbatches, virtual)


@pytest.mark.parametrize("virtual", [1, 2, 3])
@pytest.mark.parametrize(("ranks", "microbatches"), [(2, 2), (2, 5), (4, 4), (4, 8), (3, 7)])
def test_looped_bfs_matches_torch(ranks: int, microbatches: int, virtual: int) -> None:
    ours = ppc_orders("looped_bfs", ranks, microbatches, virtual)
    assert ours == torch_orders("LoopedBFS", ranks, microbatches, virtual)


@pytest.mark.parametrize(("ranks", "microbatches"), [(2, 3), (4, 8), (3, 5)])
def test_gpipe_all_forwards_then_all_backwards(ranks: int, microbatches: int) -> None:
    ours = ppc_orders("gpipe", ranks, microbatches)
    expected = [
        [f"{r}F{m}" for m in range(microbatches)] + [f"{r}B{m}" for m in range(microbatches)]
        for r in range(ranks)
    ]
    assert ours == expected == torch_orders("GPipe", ranks, microbatches)


def test_zbv_uses_torchs_v_placement_and_split_backward() -> None:
    ours = load_schedule("zbv").expand(ranks=4, microbatches=8, virtual=2)
    theirs = torch_orders("ZBVZeroBubble", 4, 8, 2)
    for rank in range(4):
        assert {Action.parse(a).stage for a in theirs[rank]} == set(ours.stages_of(rank))
        assert sorted(theirs[rank]) == sorted(str(a) for a in ours.compute[rank])
    assert {a.kind for row in ours.compute for a in row} == {Kind.F, Kind.I, Kind.W}


IRREGULAR = [(r, m) for r in (1, 3, 5, 7) for m in sorted({1, max(1, r - 1), r + 1, 2 * r + 3})]
PEERS = [("gpipe", "GPipe", (1,)), ("interleaved_1f1b", "Interleaved1F1B", (1, 2, 3)),
         ("looped_bfs", "LoopedBFS", (1, 2, 3)), ("interleaved_zb", "InterleavedZeroBubble", (2, 3))]


@pytest.mark.parametrize(("ours", "theirs", "virtuals"), PEERS, ids=[p[0] for p in PEERS])
@pytest.mark.parametrize(("ranks", "microbatches"), IRREGULAR)
def test_irregular_shapes_match_torch_wherever_torch_accepts_them(ours, theirs, virtuals, ranks, microbatches):
    """R = 1, M below R, M not a multiple of R: wherever torch builds the order, ppc builds
    it too and equals it op for op."""
    compared = 0
    for virtual in virtuals:
        try:
            expected = torch_orders(theirs, ranks, microbatches, None if theirs == "GPipe" else virtual)
        except Exception:  # noqa: BLE001, S112  torch refuses this shape: nothing to compare
            continue
        assert ppc_orders(ours, ranks, microbatches, virtual) == expected, (virtual, expected)
        compared += 1
    if theirs == "GPipe":
        assert compared == 1

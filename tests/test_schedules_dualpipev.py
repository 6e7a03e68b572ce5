"""DualPipeV and the overlapped F&B op: op for op torch's ScheduleDualPipeV, CSV in and out
in torch's spelling, the `overlap` cost, memory and dependencies of both parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ppc
from ppc.sim.timeline import simulate
from torch.distributed.pipelining import _schedule_visualizer as visualizer
from torch.distributed.pipelining.schedules import _Action

from ppc.compiler import compile_program
from ppc.costs import CostModel
from ppc.errors import ScheduleError, ValidationError
from ppc.ir.order import Action
from ppc.lang import load_schedule
from ppc.lang.csv_format import parse_csv, write_csv

GRID = [(r, m) for r in range(2, 7) for m in (2 * r, 2 * r + 1, 3 * r, 4 * r)]


def torch_rows(ranks: int, microbatches: int) -> list[list[str]]:
    ops = visualizer.get_schedule_ops("DualPipeV", ranks, microbatches, 2)
    return [[str(a) for a in row if a is not None] for row in ops]


@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_dualpipev_is_torchs_order_op_for_op(ranks: int, microbatches: int) -> None:
    order = load_schedule("dualpipev").expand(ranks=ranks, microbatches=microbatches, virtual=2)
    assert [[str(a) for a in row] for row in order.compute] == torch_rows(ranks, microbatches)


@pytest.mark.parametrize(("ranks", "microbatches"), [(2, 4), (4, 8), (4, 13), (6, 12)])
def test_torch_csv_imports_and_ppc_csv_loads_in_torch(ranks: int, microbatches: int) -> None:
    text = "\n".join(",".join(row) for row in torch_rows(ranks, microbatches)) + "\n"
    imported = parse_csv(text, "dualpipev.csv")
    ours = load_schedule("dualpipev").expand(ranks=ranks, microbatches=microbatches, virtual=2)
    assert imported.compute == ours.compute and imported.placement == ours.placement
    exported = write_csv(ours)
    for line in exported.splitlines():
        for cell in line.split(","):
            assert str(_Action.from_str(cell)) == cell  # torch's own parser reads every cell


@pytest.mark.parametrize(("ranks", "microbatches"), [(2, 4), (3, 7), (4, 8), (4, 16)])
def test_dualpipev_bubble_and_peak_equal_torchs_under_the_same_costs(ranks, microbatches) -> None:
    costs = CostModel.uniform(2 * ranks)
    ours = simulate(compile_program(load_schedule("dualpipev").expand(ranks=ranks, microbatches=microbatches, virtual=2)),
                    costs)
    text = "\n".join(",".join(row) for row in torch_rows(ranks, microbatches)) + "\n"
    theirs = simulate(compile_program(parse_csv(text, "t.csv")), costs)
    assert ours.makespan == theirs.makespan and ours.bubble == theirs.bubble
    assert [s.peak_activations for s in ours.per_rank] == [s.peak_activations for s in theirs.per_rank]


def test_overlap_factor_shortens_the_step_by_the_overlapped_time() -> None:
    order = load_schedule("dualpipev").expand(ranks=4, microbatches=16, virtual=2)
    program = compile_program(order)
    plain = simulate(program, CostModel.uniform(8))
    faster = simulate(program, CostModel.parse_inline("F=1,I=1,W=1,overlap=0.5", 8))
    fixed = simulate(program, CostModel.from_dict({"overlap": {"time": 1.5}}, 8))
    overlapped = [sum(1 for a in row if a.parts) for row in order.compute]
    # each FB is F + B = 3 units alone; at factor 0.5 it is 1.5 units, as with a fixed 1.5
    for rank, count in enumerate(overlapped):
        assert faster.per_rank[rank].busy == pytest.approx(plain.per_rank[rank].busy - 1.5 * count)
        assert fixed.per_rank[rank].busy == pytest.approx(faster.per_rank[rank].busy)
    assert faster.makespan < plain.makespan


def test_overlapped_op_memory_is_both_parts() -> None:
    one = parse_csv("0F0,0F1,(0F2;0B0)OVERLAP_F_B,0B1,0B2\n", "x.csv")
    timeline = simulate(compile_program(one), CostModel.uniform(1))
    assert timeline.per_rank[0].peak_activations == 3  # the F part lands before the B part frees


def test_overlapped_op_must_not_overlap_a_pair_with_itself() -> None:
    with pytest.raises(ValidationError, match=r"overlaps the backward of stage 0 microbatch 0 with its own forward"):
        parse_csv("(0F0;0B0)OVERLAP_F_B\n", "x.csv")


def test_overlapped_op_parts_are_checked_for_rank_and_order() -> None:
    with pytest.raises(ValidationError, match=r"rank 0 position 1: 1B0 runs on rank 0, but stage 1 is placed on rank 1"):
        parse_csv("0F0,(0F1;1B0)OVERLAP_F_B,0B1\n1F0,1F1,1B1\n", "x.csv")
    with pytest.raises(ScheduleError, match=r"unknown overlapped action '\(0F1;0W0\)OVERLAP_F_B'"):
        Action.parse("(0F1;0W0)OVERLAP_F_B")


def test_language_statement_takes_stages_or_stages_and_microbatches(tmp_path: Path) -> None:
    path = tmp_path / "bad.ppc"
    path.write_text('schedule bad\nplacement loop\nper rank r {\n  FB(0, 1, 2)\n}\n')
    with pytest.raises(ScheduleError) as caught:
        load_schedule(str(path)).expand(ranks=1, microbatches=2)
    assert (caught.value.pos.line, caught.value.pos.col) == (4, 3)
    assert "FB overlaps 2 ops: give their stages (2 arguments) or stage and microbatch of each (4)" in str(
        caught.value)


def test_default_virtual_and_contradiction() -> None:
    result = ppc("simulate", "dualpipev", "-r", "4", "-m", "8", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["makespan"] > 0
    few = ppc("compile", "dualpipev", "-r", "4", "-m", "6")
    assert few.returncode == 2 and "M >= 2 * R" in few.stderr and "dualpipev.ppc:6:" in few.stderr
    three = ppc("compile", "dualpipev", "-r", "4", "-m", "8", "--virtual", "3")
    assert three.returncode == 2 and "dualpipev.ppc:5:" in three.stderr

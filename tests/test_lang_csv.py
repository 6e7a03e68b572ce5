"""torch compute-only CSV: reading, writing, inference, and round trips through torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppc.errors import PpcError, ScheduleError
from ppc.lang import load_schedule
from ppc.lang.csv_format import parse_csv, read_csv, write_csv


def test_write_then_read_is_identity(tmp_path: Path) -> None:
    order = load_schedule("interleaved_1f1b").expand(ranks=4, microbatches=8, virtual=2)
    path = tmp_path / "i.csv"
    path.write_text(write_csv(order))
    back = read_csv(path)
    assert back.compute == order.compute
    assert back.placement == order.placement
    assert (back.ranks, back.stages, back.microbatches) == (4, 8, 8)


def test_blank_cells_are_skipped_and_vshape_is_inferred() -> None:
    text = "0F0,,3F0,3I0,3W0,0I0,0W0\n1F0,2F0,,2I0,2W0,1I0,1W0\n"
    order = parse_csv(text)
    assert order.placement == (0, 1, 1, 0)
    assert [str(a) for a in order.compute[0]] == ["0F0", "3F0", "3I0", "3W0", "0I0", "0W0"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0F0,0SEND_F0\n", "1:5: unknown action '0SEND_F0'"),
        ("0F0,0B0\n0F1,0B1\n", "stage 0 has actions on rows 0 and 1"),
        ("0F0,0B0\n2F0,2B0\n", "stage 1 has no actions"),
        ("0F0,0B0,0B0\n", "0B0 runs twice"),
        ("0B0,0F0\n", "0B0 comes before 0F0"),
    ],
)
def test_bad_csv_is_refused_with_a_position(text: str, message: str) -> None:
    with pytest.raises(PpcError) as caught:
        parse_csv(text, "x.csv")
    assert message in str(caught.value).replace("x.csv:", "")


def test_csv_sizes_must_agree_with_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    order = load_schedule("interleaved_1f1b").expand(ranks=2, microbatches=4, virtual=2)
    path.write_text(write_csv(order))
    schedule = load_schedule(str(path))
    assert schedule.expand(ranks=2, microbatches=4).compute == read_csv(path).compute
    assert schedule.expand(ranks=None, microbatches=None, virtual=None).ranks == 2
    with pytest.raises(ScheduleError, match="has 2 ranks but --ranks 4 was given"):
        schedule.expand(ranks=4, microbatches=4)
    with pytest.raises(ScheduleError, match="has 4 microbatches but --microbatches 8"):
        schedule.expand(ranks=2, microbatches=8)
    with pytest.raises(ScheduleError, match="has 2 stages per rank but --virtual 3"):
        schedule.expand(ranks=2, microbatches=4, virtual=3)
    with pytest.raises(ScheduleError, match="not --placement v"):
        schedule.expand(ranks=2, microbatches=4, placement="v")
    with pytest.raises(ScheduleError, match="takes no --param"):
        schedule.expand(ranks=2, microbatches=4, params={"x": 1})


# ---------------------------------------------------------------- through torch

schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
visualizer = pytest.importorskip("torch.distributed.pipelining._schedule_visualizer")


def _torch_reader(ranks: int, stages: int, microbatches: int):
    """A bare PipelineScheduleMulti holding only what `_load_csv` touches."""
    reader = object.__new__(schedules.PipelineScheduleMulti)
    reader.pipeline_order = {}
    reader.pp_group_size, reader._num_stages = ranks, stages
    reader._n_microbatches, reader._stages = microbatches, []
    return reader


@pytest.mark.parametrize(
    ("name", "ranks", "microbatches", "virtual"),
    [("zbv", 2, 4, 2), ("interleaved_1f1b", 4, 8, 2), ("zb_h1", 3, 6, 1), ("1f1b", 4, 8, 1)],
)
def test_torch_reads_what_ppc_writes(tmp_path: Path, name, ranks, microbatches, virtual) -> None:
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    path = tmp_path / "ppc.csv"
    path.write_text(write_csv(order))
    reader = _torch_reader(ranks, order.stages, microbatches)
    reader._load_csv(str(path))
    assert [[str(a) for a in reader.pipeline_order[r]] for r in range(ranks)] == [
        [str(a) for a in row] for row in order.compute
    ]
    assert reader.stage_index_to_group_rank == dict(enumerate(order.placement))


def test_ppc_reads_what_torch_writes(tmp_path: Path) -> None:
    writer = object.__new__(schedules.PipelineScheduleMulti)
    ops = visualizer.get_schedule_ops("ZBVZeroBubble", 4, 8, 2)
    writer.pipeline_order = dict(enumerate(ops))  # keeps torch's None gaps as blank cells
    path = tmp_path / "torch.csv"
    writer._dump_csv(str(path))
    order = read_csv(path)
    assert order.placement == (0, 1, 2, 3, 3, 2, 1, 0)
    assert [[str(a) for a in row] for row in order.compute] == [
        [str(a) for a in row if a is not None] for row in ops
    ]

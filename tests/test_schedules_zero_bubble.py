"""The zero-bubble family (zb_h1, zbv, interleaved_zb) simulated by ppc, against closed forms
and against torch.distributed.pipelining's orders imported through its compute-only CSV.

Costs are ppc's defaults (F = I = W = 1 per stage, no transfer time); memory is ppc's model
(a (stage, microbatch) set is alive from its F until its W). With V stages per rank each
set is 1/V of a one-stage-per-rank set.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from unittest import mock

import pytest
from ppc.sim.timeline import simulate

from ppc.cli import main
from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.errors import ScheduleError
from ppc.ir.order import ComputeOrder
from ppc.lang import load_schedule
from ppc.lang.csv_format import read_csv
from ppc.lang.expand import expand
from ppc.lang.parser import parse
from ppc.verify.program import check

GRID = [(r, m) for r in range(2, 9) for m in range(r, 4 * r + 1)]  # R in 2..8, M in R..4R
SAMPLE = [(r, m) for r in range(2, 9) for m in sorted({r, r + 1, 2 * r - 1, 2 * r, 3 * r + 1, 4 * r})]


@functools.cache
def measure(order: ComputeOrder) -> tuple[float, tuple[int, ...], float]:
    """(makespan, peak activation sets per rank, bubble) under the default unit costs."""
    costs = CostModel.load(None, order.stages)
    program = lower(order, None, costs=costs)
    timeline = simulate(program, costs, checked=check(program, None))
    return timeline.makespan, tuple(s.peak_activations for s in timeline.per_rank), timeline.bubble


def ours(name: str, ranks: int, microbatches: int, virtual: int | None = None) -> ComputeOrder:
    return load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)


# ---------------------------------------------------------------- torch's orders, through CSV

pipelining = pytest.importorskip("torch.distributed.pipelining.schedules")
visualizer = pytest.importorskip("torch.distributed.pipelining._schedule_visualizer")


def _torch_actions(name: str, ranks: int, microbatches: int, virtual: int):
    if virtual > 1:
        return visualizer.get_schedule_ops(name, ranks, microbatches, virtual)
    # the visualizer insists on V >= 2: build the schedule around one mocked stage per rank
    stage = _mock_stage()
    stage.group_rank, stage.group_size, stage.submod, stage.num_stages = 0, ranks, None, ranks
    schedule = pipelining.get_schedule_class(name)([stage], microbatches)
    return [schedule.pipeline_order[r] for r in range(ranks)]


@functools.cache
def _mock_stage():
    from torch.distributed.pipelining.stage import PipelineStage

    return mock.create_autospec(PipelineStage, instance=True)


@functools.cache
def theirs(name: str, ranks: int, microbatches: int, virtual: int, folder: Path) -> ComputeOrder | None:
    """torch's compute order written by its own `_dump_csv` and read back by ppc (None: refused)."""
    try:
        actions = _torch_actions(name, ranks, microbatches, virtual)
    except ValueError:  # e.g. InterleavedZeroBubble: M must be a multiple of its rounds
        return None
    writer = object.__new__(pipelining.PipelineScheduleMulti)
    compute = {"F", "I", "W", "B"}
    writer.pipeline_order = {
        r: [a for a in row if a is None or a.computation_type.value in compute]
        for r, row in enumerate(actions)
    }
    path = folder / f"{name}_{ranks}_{microbatches}_{virtual}.csv"
    writer._dump_csv(str(path))
    return read_csv(path)


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("torch_csv")


def torch_accepts_izb(ranks: int, microbatches: int) -> bool:
    return microbatches % max(1, microbatches // ranks) == 0


# ---------------------------------------------------------------- zb_h1


@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_zb_h1_has_zb_h1_bubble_at_1f1b_memory(ranks: int, microbatches: int) -> None:
    makespan, peaks, bubble = measure(ours("zb_h1", ranks, microbatches))
    # ZB-H1: idle (R-1)(F+I-W) = R-1 per rank over a step of 3M + R - 1
    assert makespan == 3 * microbatches + ranks - 1
    assert bubble == pytest.approx((ranks - 1) / (3 * microbatches + ranks - 1))
    assert peaks == (ranks,) * ranks  # 1F1B's memory on every rank


@pytest.mark.parametrize(("ranks", "microbatches"), SAMPLE)
def test_zb_h1_is_torchs_interleaved_zero_bubble_at_v1(ranks, microbatches, csv_dir) -> None:
    reference = theirs("InterleavedZeroBubble", ranks, microbatches, 1, csv_dir)
    if reference is None:
        pytest.skip("torch refuses this M")
    order = ours("zb_h1", ranks, microbatches)
    assert order.compute == reference.compute
    assert measure(reference) == measure(order)


def test_zb_h1_runs_with_fewer_microbatches_than_ranks() -> None:
    for ranks, microbatches in [(4, 1), (4, 3), (8, 5)]:
        _, peaks, _ = measure(ours("zb_h1", ranks, microbatches))
        assert peaks == (microbatches,) * ranks


# ---------------------------------------------------------------- zbv


@pytest.mark.parametrize(("ranks", "microbatches"), GRID)
def test_zbv_reaches_the_lower_bound_at_1f1b_memory(ranks: int, microbatches: int) -> None:
    makespan, peaks, bubble = measure(ours("zbv", ranks, microbatches))
    # rank R-1 starts at R-1 and then never idles: bubble (R-1)/(6M + R-1) in half-stage units
    assert makespan == 6 * microbatches + ranks - 1
    assert bubble == pytest.approx((ranks - 1) / (6 * microbatches + ranks - 1))
    assert peaks == (2 * ranks,) * ranks  # 2R half-size sets = R full sets: 1F1B's memory


@pytest.mark.parametrize(("ranks", "microbatches"), SAMPLE)
def test_zbv_no_worse_than_torchs_zbv(ranks: int, microbatches: int, csv_dir) -> None:
    reference = theirs("ZBVZeroBubble", ranks, microbatches, 2, csv_dir)
    assert reference.placement == ours("zbv", ranks, microbatches).placement
    makespan, peaks, bubble = measure(ours("zbv", ranks, microbatches))
    their_makespan, their_peaks, their_bubble = measure(reference)
    assert makespan <= their_makespan and bubble <= their_bubble + 1e-12
    assert max(peaks) <= max(their_peaks)  # at M < 2R-1 torch's padding leaves low ranks less
    if microbatches == ranks and ranks > 2:
        assert makespan < their_makespan  # torch pads M to 2R-1 and idles


def test_the_when_full_rule_is_what_keeps_zbv_at_the_bound() -> None:
    text = load_schedule("zbv").path.read_text()
    without = parse(text.replace("when retained full prefer W", ""), "zbv_plain.ppc")
    order = expand(without, ranks=6, microbatches=8)
    assert measure(order)[0] == 6 * 8 + 5 + 2  # two units over the bound
    assert measure(ours("zbv", 6, 8))[0] == 6 * 8 + 5


# ---------------------------------------------------------------- interleaved_zb

IZB_GRID = [(r, m, v) for v in (2, 3, 4) for r in (2, 3, 4) for m in range(r, 4 * r + 1)]


def izb_peak(ranks: int, microbatches: int, virtual: int) -> int:
    """(V-1) rounds of forwards in the warm-up plus R sets in the steady state."""
    rounds = max(1, microbatches // ranks)
    per_round = -(-microbatches // rounds)
    return min((virtual - 1) * per_round + ranks, virtual * microbatches)


@pytest.mark.parametrize(("ranks", "microbatches", "virtual"), IZB_GRID)
def test_interleaved_zb_equals_torch_and_the_closed_forms(ranks, microbatches, virtual, csv_dir) -> None:
    order = ours("interleaved_zb", ranks, microbatches, virtual)
    makespan, peaks, bubble = measure(order)
    assert makespan == 3 * virtual * microbatches + ranks - 1
    assert bubble == pytest.approx((ranks - 1) / (3 * virtual * microbatches + ranks - 1))
    assert peaks == (izb_peak(ranks, microbatches, virtual),) * ranks
    if torch_accepts_izb(ranks, microbatches):
        reference = theirs("InterleavedZeroBubble", ranks, microbatches, virtual, csv_dir)
        assert order.compute == reference.compute
        assert measure(reference) == (makespan, peaks, bubble)


@pytest.mark.parametrize(("ranks", "microbatches"), [(5, 11), (6, 13), (8, 23), (8, 32)])
def test_interleaved_zb_larger_sizes(ranks: int, microbatches: int) -> None:
    for virtual in (2, 4):
        makespan, peaks, _ = measure(ours("interleaved_zb", ranks, microbatches, virtual))
        assert makespan == 3 * virtual * microbatches + ranks - 1
        assert peaks == (izb_peak(ranks, microbatches, virtual),) * ranks


def test_interleaved_zb_with_one_stage_per_rank_is_zb_h1() -> None:
    for ranks, microbatches in [(2, 2), (4, 6), (5, 13)]:
        assert ours("interleaved_zb", ranks, microbatches, 1).compute == ours("zb_h1", ranks, microbatches).compute


# ---------------------------------------------------------------- a schedule's default V


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_zbv_declares_its_v(capsys) -> None:
    assert load_schedule("zbv").default_virtual == 2
    assert load_schedule("interleaved_zb").default_virtual == 1
    code, out, _ = run_cli(capsys, "simulate", "zbv", "--ranks", "4", "--microbatches", "8", "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["stages"], doc["makespan"]) == (8, 51.0)
    code, out, _ = run_cli(capsys, "compile", "zbv", "-r", "2", "-m", "4", "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("0F0,0F1,0F2,3F0,3I0,3W0")


def test_a_contradicting_virtual_is_a_positioned_error(capsys) -> None:
    code, _, err = run_cli(capsys, "simulate", "zbv", "-r", "4", "-m", "8", "--virtual", "3")
    assert code == 2
    assert "zbv.ppc:5:1: zbv places exactly two stages per rank (--virtual 2) (R=4, M=8, V=3)" in err
    assert "Traceback" not in err


def test_virtual_declaration_is_a_default_that_require_can_pin() -> None:
    src = 'schedule s\nvirtual 3\nplacement loop\nper rank r { for v in 0 .. V { F(stage(r, v), 0) B(stage(r, v), 0) } }\n'
    definition = parse(src, "s.ppc")
    assert definition.virtual == 3
    assert expand(definition, ranks=2, microbatches=1).stages == 6
    assert expand(definition, ranks=2, microbatches=1, virtual=1).stages == 2  # a default only


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("schedule s\nvirtual 0\npolicy { prefer B, F }\n", "2:9: virtual must be at least 1, got 0"),
        ("schedule s\nvirtual 2\nvirtual 2\npolicy { prefer B, F }\n", "3:1: a schedule declares `virtual` at most once"),
        ("schedule s\nvirtual V\npolicy { prefer B, F }\n", "2:9: unexpected 'V', expected a number"),
    ],
)
def test_bad_virtual_declarations(src: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse(src, "s.ppc")
    assert message in str(caught.value).replace("s.ppc:", "")


# ---------------------------------------------------------------- `when LIMIT full prefer`


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ("split backward\n prefer I, F, W\n when retained full prefer W", "5:2: `when retained full` needs a `retained <= ...` limit"),
        ("prefer B, F\n retained <= 2\n when retained full prefer W", "5:2: prefer lists W, which a policy without `split backward` never runs"),
        ("split backward\n prefer I, F, W\n retained <= 2\n when retained full prefer W\n when retained full prefer I",
         "7:2: `when retained full` is given twice"),
        ("prefer B, F\n retained <= 2\n when retained full prefer B, B", "5:2: when ... prefer lists an op kind twice"),
    ],
)
def test_bad_when_full_items(items: str, message: str) -> None:
    src = f"schedule p\npolicy {{\n {items}\n}}\n"
    with pytest.raises(ScheduleError) as caught:
        expand(parse(src, "p.ppc"), ranks=2, microbatches=4)
    assert message in str(caught.value).replace("p.ppc:", "")


def test_when_retained_full_puts_w_first_while_the_limit_is_reached() -> None:
    plain = "schedule p\npolicy {\n split backward\n prefer I, F, W\n retained <= 2\n}\n"
    ruled = plain.replace("retained <= 2\n", "retained <= 2\n when retained full prefer W\n")
    rows = [expand(parse(text), ranks=1, microbatches=3).compute[0] for text in (plain, ruled)]
    # after F0 I0 F1 two sets are retained: plain runs I1 before W0, the rule runs W0 first
    assert [" ".join(str(a) for a in row) for row in rows] == [
        "0F0 0I0 0F1 0I1 0W0 0F2 0I2 0W1 0W2",
        "0F0 0I0 0F1 0W0 0I1 0F2 0W1 0I2 0W2",
    ]

"""PNG/SVG pictures at any scale: drawing calls per rank and kind, overview + windows."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from ppc.sim import plot
from ppc.sim.colors import colors as op_colors
from ppc.sim.lanes import lanes, stage_chunks
from ppc.sim.timeline import simulate

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.lang import load_schedule

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def timeline(name="1f1b", ranks=4, microbatches=8, virtual=1):
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    costs = CostModel.uniform(order.stages)
    return simulate(lower(order, costs=costs), costs)


@pytest.mark.parametrize("microbatches", [8, 64])
def test_boxes_are_one_drawing_call_whatever_the_number_of_ops(microbatches):
    t = timeline("interleaved_1f1b", ranks=4, microbatches=microbatches, virtual=2)
    fig, ax = plt.subplots()
    plot._boxes(ax, lanes(t), stage_chunks(t.program), 2, (0.0, t.makespan))
    (boxes,) = ax.collections  # 64 or 512 compute ops
    assert len(boxes.get_paths()) == 4 * 2 * 2 * microbatches
    colors = {tuple(np.round(c[:3], 3)) for c in boxes.get_facecolors()}
    # F and B, each in two shades (a rank's first stage, its second at 40%)
    expected = {tuple(np.round(plot._shaded(op_colors()[k], c, 2), 3)) for k in "FB" for c in (0, 1)}
    assert colors == expected
    plt.close(fig)


def test_small_step_is_one_row_per_rank_with_microbatch_labels():
    fig = plot.figure([timeline()])
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"rank {r}" for r in range(4)]
    labels = [t.get_text() for t in ax.texts]
    assert len(labels) == 4 * 8 * 2 and labels.count("7") == 8  # every op of 1F1B R=4 M=8
    plt.close(fig)


def test_large_step_is_an_overview_and_the_first_and_last_windows():
    t = timeline("1f1b", ranks=16, microbatches=128)  # 4,096 ops
    fig = plot.figure([t])
    overview, first, last = fig.axes
    assert len(overview.images) == 1 and not overview.collections
    # R microbatches' worth: 16 x 3 units (F + B of one microbatch on one stage)
    assert first.get_xlim() == (0.0, 48.0)
    assert last.get_xlim() == (t.makespan - 48.0, t.makespan)
    assert "first 16 microbatches" in first.get_title(loc="left") and "last 16" in last.get_title(loc="left")
    assert first.texts and len(first.texts) < 16 * 48  # labels only on the ops in the window
    assert {e.get_label() for e in fig.legends[0].get_patches()} == {"F", "B"}
    plt.close(fig)


def test_strip_colors_mix_the_kinds_of_each_pixel():
    # 1F1B R=2 M=1: rank 0 runs F [0,1], idles, runs B [4,6]; rank 1 idles, F [1,2], B [2,4]
    t = timeline("1f1b", ranks=2, microbatches=1)
    image = plot._strips(lanes(t), 6.0, columns=12) / 255  # half a unit per column
    f, b = plot._rgb(op_colors()["F"]), plot._rgb(op_colors()["B"])
    rank0, rank1 = image[0], image[8]
    close = {"atol": 0.5 / 255}
    np.testing.assert_allclose(rank0[:2], [f, f], **close)
    np.testing.assert_allclose(rank0[2:8], np.ones((6, 3)))
    np.testing.assert_allclose(rank0[8:], [b] * 4, **close)
    np.testing.assert_allclose(rank1[2:4], [f, f], **close)
    np.testing.assert_allclose(image[7], np.ones((12, 3)))  # the white line between ranks
    wide = plot._strips(lanes(t), 6.0, columns=3)[8] / 255  # 2 units a column: rank 1 [0,2] is half F
    np.testing.assert_allclose(wide[0], 1 - 0.5 * (1 - f), **close)


def test_coverage_of_intervals():
    got = plot._coverage(np.array([0.5, 2.0]), np.array([1.5, 2.5]), np.array([0.0, 1.0, 2.0, 3.0]))
    np.testing.assert_allclose(got, [0.5, 0.5, 0.5])


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_draw_writes_the_overview(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    plot.draw([timeline("zb_h1", ranks=8, microbatches=64)], path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data


def test_a_measured_step_is_drawn_under_the_prediction():
    from ppc.plan.compare_trace import compare

    order = load_schedule("1f1b").expand(ranks=2, microbatches=4, virtual=1)
    costs = CostModel(forward=(0.01, 0.02), backward_input=(0.01, 0.02), backward_weight=(0.01, 0.02), unit="s")
    t = simulate(lower(order, costs=costs), costs)
    events = [{"name": str(s.instruction), "ph": "X", "pid": s.rank, "tid": 0, "ts": s.start * 1.5e6,
               "dur": (s.end - s.start) * 1.5e6, "args": {"step": 0}} for s in t.spans(compute_only=True)]
    fig = plot.figure([t], measured=compare(t, events))
    predicted, measured = fig.axes
    assert predicted.get_xlim() == measured.get_xlim()  # one time axis
    assert measured.get_xlim() == pytest.approx((0.0, 1.5 * t.makespan))
    assert "prediction error -33.3%" in measured.get_title(loc="left")
    (boxes,) = measured.collections
    assert len(boxes.get_paths()) == 2 * 4 * 2
    plt.close(fig)

"""Predicted vs measured: a simulated timeline against a Chrome trace file."""

from __future__ import annotations

import json

import pytest
from ppc.sim.timeline import simulate

from ppc.compiler import compile_program
from ppc.costs import CostModel
from ppc.errors import CostError
from ppc.lang import load_schedule
from ppc.plan.compare_trace import compare, load_trace


def _timeline():
    order = load_schedule("1f1b").expand(ranks=2, microbatches=4, virtual=1)
    costs = CostModel(forward=(0.01, 0.02), backward_input=(0.01, 0.02), backward_weight=(0.01, 0.02), unit="s")
    return simulate(compile_program(order, costs=costs), costs)


def _trace(timeline, path, *, stretch=1.0, steps=1):
    events = []
    for step in range(steps):
        base = step * timeline.makespan * 2
        for span in timeline.spans():
            events.append({"name": str(span.instruction), "ph": "X", "pid": span.rank, "tid": 0,
                           "ts": (base + span.start * stretch) * 1e6,
                           "dur": (span.end - span.start) * stretch * 1e6, "args": {"step": step}})
    path.write_text(json.dumps({"traceEvents": events}))
    return load_trace(path)


def test_a_trace_of_the_prediction_has_no_error(tmp_path):
    timeline = _timeline()
    result = compare(timeline, _trace(timeline, tmp_path / "t.json"))
    assert result.error == pytest.approx(0.0, abs=1e-9)
    for p, m in zip(result.predicted, result.measured):
        assert m.busy == pytest.approx(p.busy) and m.bubble == pytest.approx(p.bubble, abs=1e-9)


def test_a_slower_run_shows_as_underprediction(tmp_path):
    timeline = _timeline()
    result = compare(timeline, _trace(timeline, tmp_path / "t.json", stretch=1.25, steps=3))
    assert result.measured_makespan == pytest.approx(1.25 * timeline.makespan)
    assert result.error == pytest.approx(1 / 1.25 - 1)


def test_bad_trace_file(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(CostError, match="not valid JSON"):
        load_trace(tmp_path / "bad.json")

"""`ppc simulate --against`: a real `ppc run --trace` (4 gloo ranks) laid beside the
simulated timeline of the same schedule, as a table and as JSON."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import ppc

from ppc.cli import main

RUN = ["run", "--model", "tiny-llama", "--schedule", "1f1b", "--ranks", "4", "--microbatches", "4",
       "--microbatch-size", "1", "--seq-len", "16", "--steps", "2", "--device", "cpu", "--quiet",
       "--nproc-per-node", "4"]


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("against") / "trace.json"
    done = ppc(*RUN, "--trace", str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    return str(path)


def simulate(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", *args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.slow  # the trace fixture runs 4 gloo ranks
def test_trace_events_carry_rank_and_step(trace):
    events = [e for e in json.loads(Path(trace).read_text())["traceEvents"] if e["ph"] == "X"]
    assert {e["args"]["rank"] for e in events} == {0, 1, 2, 3}
    assert {e["args"]["step"] for e in events} == {0, 1}
    steps = [e for e in events if "STEP" in e["name"]]
    assert sorted((e["args"]["rank"], e["args"]["step"]) for e in steps) == [(r, s) for r in range(4) for s in (0, 1)]
    # each slice's CPU time: not more than its length, up to the two clocks' disagreement
    # (on this VM the thread CPU clock runs ahead of the wall clock by up to ~30 us a slice)
    assert all(0 <= e["args"]["cpu_ms"] <= 1.1 * e["dur"] / 1e3 + 0.1 for e in events)
    waits = [e for e in events if e["cat"] == "wait"]
    assert sum(e["args"]["cpu_ms"] for e in waits) < 0.5 * sum(e["dur"] / 1e3 for e in waits)


@pytest.mark.slow  # the trace fixture runs 4 gloo ranks
def test_waits_for_receives_are_their_own_slices(trace):
    events = [e for e in json.loads(Path(trace).read_text())["traceEvents"] if e["ph"] == "X"]
    waits = [e for e in events if e["cat"] == "wait"]
    # rank 0 never receives activations; every later rank waits for its first input
    assert not [e for e in waits if e["args"]["rank"] == 0 and "F" in e["name"]]
    assert any(e["name"] == "wait 3F0" for e in waits)
    compute = {(e["args"]["rank"], e["args"]["step"], e["name"]) for e in events if e["cat"] in {"F", "B", "I", "W"}}
    for wait in waits:  # each wait sits right before the op it names
        assert (wait["args"]["rank"], wait["args"]["step"], wait["name"].split()[1]) in compute


@pytest.mark.slow  # the trace fixture runs 4 gloo ranks
def test_table_has_rank_rows_and_finite_error(trace, capsys):
    code, out, _ = simulate(capsys, "1f1b", "-r", "4", "-m", "4", "--against", trace, "--width", "40")
    assert code == 0
    rows = [line for line in out.splitlines() if re.match(r"^\W*[0-3] \W", line)]
    assert len(rows) == 4
    assert all(line.count("%") == 2 for line in rows)  # predicted and measured bubble
    error = re.search(r"prediction error ([+-][0-9.]+)%", out)
    assert error is not None and math.isfinite(float(error.group(1)))
    assert "not seconds" in out  # default costs are unit-less: the CLI says so


@pytest.mark.slow  # the trace fixture runs 4 gloo ranks
def test_json_against_with_costs_in_seconds(trace, capsys, tmp_path):
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"unit": "s", "F": 0.01, "I": 0.01, "W": 0.01}))
    code, out, _ = simulate(capsys, "1f1b", "-r", "4", "-m", "4", "--costs", str(costs), "--against", trace,
                            "--json")
    assert code == 0
    doc = json.loads(out)
    against = doc["against"]
    assert against["unit"] == "s"
    assert against["predicted_makespan"] == pytest.approx(doc["makespan"]) == pytest.approx(7 * 0.03)
    measured = against["measured_makespan"]
    assert 0 < measured < 60
    assert against["error"] == pytest.approx((against["predicted_makespan"] - measured) / measured)
    assert [r["rank"] for r in against["per_rank"]] == [0, 1, 2, 3]
    for row in against["per_rank"]:
        m = row["measured"]
        assert 0 < m["busy"] <= measured + 1e-9
        assert m["busy"] + m["idle"] == pytest.approx(measured)
        assert row["predicted"]["busy"] == pytest.approx(4 * 0.03)


@pytest.mark.slow  # the trace fixture runs 4 gloo ranks
def test_picture_draws_the_measured_step_under_the_prediction(trace, capsys, tmp_path):
    out = tmp_path / "against.svg"
    code, _, _ = simulate(capsys, "1f1b", "-r", "4", "-m", "4", "--against", trace, "--out", str(out))
    svg = out.read_text()
    assert code == 0 and "measured (trace, one step)" in svg and "prediction error" in svg


@pytest.mark.slow  # the trace fixture runs 4 gloo ranks
def test_trace_with_other_ranks_is_one_line_exit_2(trace, capsys):
    code, _, err = simulate(capsys, "1f1b", "-r", "2", "-m", "4", "--against", trace)
    assert code == 2
    assert err.strip().count("\n") == 0 and "the trace has ranks [0, 1, 2, 3]" in err


def test_missing_trace_is_one_line_exit_2(capsys, tmp_path):
    code, _, err = simulate(capsys, "1f1b", "-r", "4", "-m", "4", "--against", str(tmp_path / "none.json"))
    assert code == 2 and "no such trace file" in err and "Traceback" not in err

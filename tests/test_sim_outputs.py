"""Terminal Gantt, Chrome trace and report documents of a timeline."""

from __future__ import annotations

import json

import pytest
from ppc.sim.gantt import gantt
from ppc.sim.report import summary, to_json
from ppc.sim.timeline import simulate
from ppc.sim.trace import PREDICTED_TID, RUN_TID, trace_events, write_trace

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.lang import load_schedule
from ppc.plan.compare_trace import compare, load_trace


def timeline(name="1f1b", ranks=2, microbatches=1, costs=None):
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches)
    costs = costs or CostModel.uniform(order.stages)
    return simulate(lower(order, costs=costs), costs)


def test_gantt_cells_show_ops_microbatches_and_idle():
    # 0F0 [0,1]  1F0 [1,2]  1B0 [2,4]  0B0 [4,6]
    lines = gantt(timeline(), width=12).plain.splitlines()  # half a unit per cell
    assert lines[0] == "rank 0 0F······0BBB"
    assert lines[1] == "rank 1 ··0F0BBB····"
    assert "makespan 6" in lines[2]


def test_trace_has_one_process_per_rank_and_scaled_times():
    doc = trace_events(timeline(costs=CostModel.from_dict({"unit": "s"}, 2)))
    processes = [e for e in doc["traceEvents"] if e["name"] == "process_name"]
    assert [(p["pid"], p["args"]["name"]) for p in processes] == [(0, "rank 0"), (1, "rank 1")]
    b0 = next(e for e in doc["traceEvents"] if e.get("name") == "0B0")
    assert (b0["ts"], b0["dur"], b0["pid"], b0["tid"]) == (4e6, 2e6, 0, PREDICTED_TID)
    assert b0["args"] == {"rank": 0, "step": 0, "stage": 0, "microbatch": 0}


def test_simulated_and_run_traces_share_the_pid_convention(tmp_path):
    from ppc.exec.trace import write_trace as write_run_trace

    t = timeline(microbatches=2)
    simulated = [e for e in trace_events(t)["traceEvents"] if e["ph"] == "X"]
    for rank in range(2):  # what rank `rank` of `ppc run --trace` writes (no process group: its part file)
        records = [(str(s.instruction), s.start, s.end, 0.0) for s in t.spans(rank, compute_only=True)]
        write_run_trace(str(tmp_path / "run.json"), rank=rank, records=records)
    run = json.loads((tmp_path / "run.json").read_text())["traceEvents"]  # rank 0 merged its own part
    run += json.loads((tmp_path / "run.json.rank-1.json").read_text())
    for events in (simulated, [e for e in run if e["ph"] == "X"]):
        assert all(e["pid"] == e["args"]["rank"] for e in events)
        assert {e["pid"] for e in events} == {0, 1}
    assert {e["tid"] for e in run if e["ph"] == "X"} == {RUN_TID}
    names = {(e["pid"], e["args"]["name"]) for e in run if e["name"] == "process_name"}
    assert names == {(0, "rank 0"), (1, "rank 1")}
    # the same op on the same rank: one process in both traces
    key = {(e["pid"], e["name"]) for e in simulated if e["cat"] in "FBIW"}
    assert key == {(e["pid"], e["name"]) for e in run if e["ph"] == "X"}


def test_a_simulated_trace_reads_back_as_a_run_trace(tmp_path):
    t = timeline("zb_h1", ranks=2, microbatches=3, costs=CostModel.from_dict({"unit": "s", "F": 0.01}, 2))
    write_trace(t, tmp_path / "sim.json")
    result = compare(t, load_trace(tmp_path / "sim.json"))
    assert result.error == pytest.approx(0.0, abs=1e-9)
    assert [m.busy for m in result.measured] == pytest.approx([s.busy for s in t.per_rank])


def test_measured_step_overlays_the_prediction_rank_by_rank():
    t = timeline(microbatches=2)
    run = [{"name": str(s.instruction), "ph": "X", "pid": s.rank, "tid": 0, "ts": 5e6 + s.start * 1.1e3,
            "dur": (s.end - s.start) * 1.1e3, "args": {"rank": s.rank, "step": 3}}
           for s in t.spans(compute_only=True)]
    events = trace_events(t, measured=run)["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert {(e["pid"], e["tid"]) for e in slices} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert min(e["ts"] for e in slices if e["tid"] == RUN_TID) == 0.0
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert threads == {(0, 1): "predicted: 1f1b", (1, 1): "predicted: 1f1b", (0, 0): "run", (1, 0): "run"}


def test_report_documents():
    t = timeline("zb_h1", 2, 3)
    doc = to_json(t)
    assert doc["makespan"] == 10.0
    assert [r["idle"] for r in doc["per_rank"]] == [1.0, 1.0]
    assert summary(t) == {
        "schedule": "zb_h1", "ranks": 2, "stages": 2, "microbatches": 3, "makespan": 10.0,
        "bubble": doc["bubble"], "peak_activations": 2, "peak_stage_equivalents": 2.0, "peak_bytes": None,
    }


def test_cli_writes_the_compared_step_beside_the_prediction(tmp_path, capsys):
    from ppc.cli import main

    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"unit": "s", "F": 0.01, "I": 0.01, "W": 0.01}))
    t = timeline(microbatches=2, costs=CostModel.load(str(costs), 2))
    run = [{"name": str(s.instruction), "ph": "X", "pid": s.rank, "tid": 0, "ts": (9 + step + s.start) * 1e6,
            "dur": (s.end - s.start) * 1e6, "args": {"rank": s.rank, "step": step}}
           for step in range(3) for s in t.spans(compute_only=True)]
    (tmp_path / "run.json").write_text(json.dumps({"traceEvents": run}))
    out = tmp_path / "both.json"
    with pytest.raises(SystemExit) as done:
        main(["simulate", "1f1b", "-r", "2", "-m", "2", "--costs", str(costs), "--against",
              str(tmp_path / "run.json"), "--out", str(out), "--json"])
    assert done.value.code == 0
    assert json.loads(capsys.readouterr().out)["against"]["error"] == pytest.approx(0.0, abs=1e-9)
    slices = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    measured = sorted((e["pid"], e["name"], e["ts"]) for e in slices if e["tid"] == RUN_TID)
    predicted = sorted((e["pid"], e["name"], e["ts"]) for e in slices if e["tid"] == PREDICTED_TID
                       and e["cat"] in "FBIW")
    assert {e["args"]["step"] for e in slices if e["tid"] == RUN_TID} == {1}  # the compared step only
    assert [m[:2] for m in measured] == [p[:2] for p in predicted]
    assert [m[2] for m in measured] == pytest.approx([p[2] for p in predicted])


def test_cli_refuses_an_unknown_picture_format_before_simulating(capsys):
    from ppc.cli import main

    with pytest.raises(SystemExit) as done:
        main(["simulate", "1f1b", "-r", "2", "-m", "2", "--out", "t.gif"])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip() == "ppc: --out t.gif: expected a file ending in .json, .svg, .png, .html"

"""Terminal Gantt, Chrome trace and report documents of a timeline."""

from __future__ import annotations

from ppc.sim.gantt import gantt
from ppc.sim.report import summary, to_json
from ppc.sim.timeline import simulate
from ppc.sim.trace import trace_events

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.lang import load_schedule


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


def test_trace_has_one_thread_per_rank_and_scaled_times():
    doc = trace_events(timeline(costs=CostModel.from_dict({"unit": "s"}, 2)))
    threads = [e for e in doc["traceEvents"] if e["name"] == "thread_name"]
    assert [t["args"]["name"] for t in threads] == ["rank 0", "rank 1"]
    b0 = next(e for e in doc["traceEvents"] if e.get("name") == "0B0")
    assert (b0["ts"], b0["dur"], b0["tid"]) == (4e6, 2e6, 0)


def test_report_documents():
    t = timeline("zb_h1", 2, 3)
    doc = to_json(t)
    assert doc["makespan"] == 10.0
    assert [r["idle"] for r in doc["per_rank"]] == [1.0, 1.0]
    assert summary(t) == {
        "schedule": "zb_h1", "ranks": 2, "stages": 2, "microbatches": 3, "makespan": 10.0,
        "bubble": doc["bubble"], "peak_activations": 2, "peak_bytes": None,
    }

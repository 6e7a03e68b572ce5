"""`ppc search`: optimality on small cases, the CSV equals `ppc simulate`, budgets, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ppc.cli import main
from ppc.costs import CostModel
from ppc.errors import CostError
from ppc.search import MemoryBudget, SearchRequest, parse_budget, search
from ppc.search.problem import Resolution

pytest.importorskip("ortools")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def solve(ranks, microbatches, *, virtual=1, placement="loop", costs=None, memory=None, split_backward=True):
    costs = costs or CostModel.uniform(ranks * virtual)
    return search(SearchRequest(ranks=ranks, microbatches=microbatches, virtual=virtual, placement=placement,
                                costs=costs, memory=memory, time_limit=30, workers=2,
                                split_backward=split_backward))


@pytest.mark.parametrize(("ranks", "microbatches"), [(2, 3), (3, 4), (3, 6)])
def test_unbounded_unit_costs_reach_zero_bubble_closed_form(ranks, microbatches):
    result = solve(ranks, microbatches)
    # ZB-H1's step under F = I = W: every rank busy 3M, started R - 1 forwards late
    assert result.makespan == 3 * microbatches + ranks - 1
    assert result.optimal and result.gap == 0 and result.status == "OPTIMAL"


def test_budget_of_1f1b_memory_still_reaches_zb_h1_step():
    result = solve(3, 6, memory=MemoryBudget(limit=3))
    assert result.makespan == 3 * 6 + 3 - 1 and result.optimal
    assert [a for a, _ in result.peaks] == [3, 3, 3]
    zb_h1 = next(c for c in result.builtins if c.name == "zb_h1")  # ZB-H1 holds R sets: it fits and is optimal
    assert zb_h1.fits and zb_h1.makespan == result.makespan


def test_tighter_budget_costs_time_and_is_proven():
    free = solve(3, 6).makespan
    tight = solve(3, 6, memory=MemoryBudget(limit=1))  # one microbatch in flight: no overlap at all
    assert tight.optimal and tight.makespan > free
    assert all(a <= 1 for a, _ in tight.peaks)
    # with a single set per rank the pipeline runs one microbatch at a time end to end
    assert tight.makespan == 6 * (3 * 1 + 3 * 1 + 1)


def test_never_worse_than_the_best_fitting_builtin_and_bound_below_step():
    costs = CostModel.from_dict({"F": [1, 1, 2], "I": [1.5, 1.5, 3], "W": [0.5, 0.5, 1]}, 3)
    result = solve(3, 6, costs=costs, memory=MemoryBudget(limit=3))
    fitting = [c.makespan for c in result.builtins if c.fits]
    assert fitting and result.makespan <= min(fitting)
    assert result.lower_bound <= result.makespan + 1e-9
    assert result.optimal


def test_virtual_stages_v_placement():
    result = solve(2, 4, virtual=2, placement="v", memory=MemoryBudget(limit=2))
    assert result.order.placement == (0, 1, 1, 0)
    assert result.optimal and all(a <= 2 for a, _ in result.peaks)


def test_without_split_backward_the_orders_hold_only_f_and_b():
    result = solve(2, 3, split_backward=False)
    kinds = {a.kind.value for row in result.order.compute for a in row}
    assert kinds == {"F", "B"}
    assert result.makespan == 12 and result.optimal  # 1F1B is optimal with a full backward: (M + R - 1) * 3


def test_inexact_costs_bound_is_below_the_simulated_step():
    costs = CostModel.parse_inline("F=0.3333333,I=0.7071,W=0.2718,latency=0.0123", 3)
    result = solve(3, 4, costs=costs, memory=MemoryBudget(limit=3))
    assert result.resolution.exact is False
    assert result.lower_bound <= result.makespan + 1e-12
    assert result.gap < 0.01


def test_bytes_budget_respected_per_rank():
    costs = CostModel.from_dict({"F": 1, "I": 1, "W": 1, "activation_bytes": [100, 100, 300], "weight_share": 0.5}, 3)
    budget = parse_budget("400B", costs)
    assert budget.kind == "bytes" and budget.limit == 400
    result = solve(3, 5, costs=costs, memory=budget)
    assert all(b <= 400 for _, b in result.peaks)
    assert result.lower_bound <= result.makespan


def test_progress_reports_the_warm_start_then_solutions():
    events = []
    request = SearchRequest(ranks=3, microbatches=6, costs=CostModel.uniform(3), memory=MemoryBudget(limit=3),
                            time_limit=30, workers=2)
    result = search(request, progress=lambda *event: events.append(event))
    assert events[0] == (0.0, 20.0, 20.0)  # the warm start: zb_h1, the best built-in in 3 sets, is optimal
    assert all(bound <= result.makespan <= best for _, best, bound in events)
    assert events[-1][1] == result.makespan == 20


def test_resolution_is_exact_for_halves_and_rounds_down_otherwise():
    assert Resolution.for_values([1, 1.5, 0.5]) == Resolution(2.0, True)
    fine = Resolution.for_values([0.0155, 0.0055, 1e-5])
    assert not fine.exact and fine.ticks(0.0155) == 1000 and fine.ticks(0.0055) == 354  # 354.8 rounded down


def test_budget_parsing_errors():
    unit = CostModel.uniform(2)
    with pytest.raises(CostError, match="needs activation_bytes"):
        parse_budget("12GiB", unit)
    with pytest.raises(CostError, match="cannot read"):
        parse_budget("lots", unit)
    assert parse_budget("1.5KiB", CostModel.from_dict({"activation_bytes": 10}, 2)).limit == 1536


def test_cli_csv_round_trip_equals_simulate(capsys, tmp_path):
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"F": [1, 1, 1, 2], "I": [1.5, 1.5, 1.5, 3], "W": [0.5, 0.5, 0.5, 1],
                                 "comm": {"latency": 0.25}, "activation_bytes": 1000}))
    out = tmp_path / "best.csv"
    code, stdout, _ = run_cli(capsys, "search", "-r", "4", "-m", "6", "--costs", str(costs), "--memory", "4",
                              "--time-limit", "20", "-o", str(out), "--json")
    assert code == 0
    found = json.loads(stdout)
    assert {"makespan", "lower_bound", "gap", "optimal", "per_rank", "schedule"} <= set(found)
    assert found["schedule"] == str(out) and all(r["peak_activations"] <= 4 for r in found["per_rank"])
    code, stdout, _ = run_cli(capsys, "simulate", str(out), "--costs", str(costs), "--json")
    assert code == 0
    simulated = json.loads(stdout)
    assert simulated["makespan"] == found["makespan"]
    assert [r["peak_activations"] for r in simulated["per_rank"]] == [r["peak_activations"] for r in found["per_rank"]]
    assert found["lower_bound"] <= found["makespan"]


def test_cli_table_output(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "search", "-r", "3", "-m", "6", "--memory", "3", "-o", str(tmp_path / "s.csv"))
    assert code == 0
    assert "step 20 units, lower bound 20 units: optimal (proven)" in out
    line = next(x for x in out.splitlines() if x.startswith("best built-in under this budget:"))
    assert line.split(":")[1].split(",")[0].strip() in ("zb_h1", "interleaved_zb")  # the same order at V = 1
    assert "step 20 units" in line


def test_cli_refuses_a_budget_below_the_minimum(capsys, tmp_path):
    code, out, err = run_cli(capsys, "search", "-r", "4", "-m", "8", "--virtual", "2", "--memory", "1",
                             "-o", str(tmp_path / "s.csv"))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [(
        "ppc: --memory 1 activation sets: below the minimum any schedule needs, 2 activation sets per rank "
        "(each rank runs the forward of its 2 stage(s) of a microbatch before its backward)"
    )]
    assert not (tmp_path / "s.csv").exists()


def test_cli_refuses_bytes_below_the_minimum(capsys, tmp_path):
    code, _, err = run_cli(capsys, "search", "-r", "2", "-m", "2", "--costs", "F=1", "--memory", "1GiB",
                           "-o", str(tmp_path / "s.csv"))
    assert code == 2 and "needs activation_bytes in the costs" in err


def test_compile_and_simulate_do_not_import_ortools():
    code = (
        "import sys\n"
        "from ppc.cli import main\n"
        "try:\n    main(['simulate', '1f1b', '-r', '2', '-m', '2', '--json'])\n"
        "except SystemExit:\n    pass\n"
        "assert 'ortools' not in sys.modules and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_plan_search_candidate_wins_and_is_written_as_csv(capsys, tmp_path):
    costs = tmp_path / "uneven.json"  # heavy last stage, 1 GiB of activations per set, no weights
    costs.write_text(json.dumps({"unit": "s", "F": [1] * 7 + [2], "I": [1.5] * 7 + [3], "W": [0.5] * 7 + [1],
                                 "activation_bytes": [2**30] * 8, "weight_share": 0.5}))
    out = tmp_path / "plan.ppc"
    code, stdout, _ = run_cli(capsys, "plan", "--costs", str(costs), "--ranks", "8", "--global-batch", "16",
                              "--microbatch-sizes", "1", "--virtual", "1", "--memory-cap", "6",
                              "--search", "20", "-o", str(out))
    assert code == 0
    # zb_h1 (106 s) needs 11.5 GiB; the search keeps the bound (head 7 s + 96 s of work) in 6
    assert "winner: search V=1 M=16x1 split=1/1/1/1/1/1/1/1, predicted step 103 s" in stdout
    written = tmp_path / "plan.csv"
    assert written.exists() and not out.exists()
    code, stdout, _ = run_cli(capsys, "simulate", str(written), "--costs", str(costs), "--json")
    doc = json.loads(stdout)
    assert doc["makespan"] == 103
    assert max(r["peak_bytes"] for r in doc["per_rank"]) <= 6 * 2**30

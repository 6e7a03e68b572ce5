"""`ppc profile --ranks`: op costs from a calibration run of the executor on this host."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import ppc
from ppc.sim.timeline import simulate

from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.errors import CostError
from ppc.host import threads_per_rank
from ppc.lang import load_schedule
from ppc.measure.host_calibration import calibration_schedule, costs_from_trace, fit_cores
from ppc.plan.cost_profile import CostProfile


def slice_(name, rank, step, cpu_ms, dur_ms=10.0):
    return {"name": name, "ph": "X", "pid": rank, "ts": 0.0, "dur": dur_ms * 1e3,
            "args": {"rank": rank, "step": step, "cpu_ms": cpu_ms}}


def test_costs_from_trace_takes_medians_of_cpu_time_after_the_skipped_steps():
    events = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "rank 0"}}]
    for step, scale in ((0, 100.0), (1, 1.0), (2, 3.0), (3, 2.0)):
        events += [
            slice_("0F0", 0, step, 1.0 * scale), slice_("0F1", 0, step, 1.0 * scale),
            slice_("0B0", 0, step, 2.0 * scale), slice_("1F0", 1, step, 4.0 * scale),
            slice_("1B0", 1, step, 8.0 * scale), slice_("0SEND_F0>1 0RECV_B0<1", 0, step, 0.1 * scale),
            slice_("wait 1F0", 1, step, 0.01), slice_("0STEP0", 0, step, 0.5 * scale),
            slice_("1STEP0", 1, step, 0.7 * scale),
        ]
    got = costs_from_trace(events, stages=2, placement=[0, 1], skip_steps=1)
    assert got["F"] == pytest.approx([2e-3, 8e-3])  # steps 1-3: medians of (1, 3, 2) x base
    assert got["B"] == pytest.approx([4e-3, 16e-3])
    assert got["step"] == pytest.approx([1e-3, 1.4e-3])
    assert got["post"] == pytest.approx(0.2e-3)  # waits are not postings


def test_costs_from_trace_names_what_is_missing():
    with pytest.raises(CostError, match="no CPU times for B1"):
        costs_from_trace([slice_("0F0", 0, 1, 1.0), slice_("0B0", 0, 1, 1.0), slice_("1F0", 1, 1, 1.0)],
                         stages=2, placement=[0, 1], skip_steps=1)


def test_calibration_schedule_is_gpipe_ordered():
    assert calibration_schedule(4, 4) == ("gpipe", 1)
    assert calibration_schedule(4, 8) == ("looped_bfs", 2)
    with pytest.raises(CostError, match="multiple of the ranks"):
        calibration_schedule(4, 6)


def test_fit_cores_reproduces_the_measured_step():
    order = load_schedule("gpipe").expand(ranks=4, microbatches=8)
    costs = dataclasses.replace(CostModel.uniform(4, F=1.0, I=1.0, W=1.0), cores=2.0)
    program = lower(order, None, costs=costs)

    def predict(c):
        return simulate(program, c).makespan

    ideal = predict(costs)
    fitted = fit_cores(costs, predict, ideal * 1.3)
    assert fitted.cores < 2.0
    assert predict(fitted) == pytest.approx(ideal * 1.3, rel=1e-3)
    # a run at least as fast as the physical cores predict leaves them as they are
    assert fit_cores(costs, predict, ideal * 0.9).cores == 2.0


def test_threads_per_rank_splits_the_cores_unless_omp_says(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("ppc.host.host_cores", lambda: 16)
    assert threads_per_rank(4) == 4 and threads_per_rank(32) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_rank(4) == 3


@pytest.mark.slow
def test_profile_ranks_calibrates_on_this_host(tmp_path):
    """A real calibration run: 2 gloo ranks of tiny-llama under gpipe."""
    out = tmp_path / "costs.json"
    done = ppc("profile", "--model", "tiny-llama", "--stages", "2", "--seq-len", "16", "--no-layers",
               "--warmup", "1", "--repeats", "3", "--ranks", "2", "-o", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "calibration run: gpipe (V=1) on 2 ranks" in done.stdout
    profile = CostProfile.load(out)
    c = profile.stage_costs
    assert c.cores is not None and 0 < c.cores <= profile.meta["calibration"]["physical_cores"]
    assert c.post > 0 and all(x > 0 for x in c.optimizer) and all(f > 0 for f in c.forward)
    assert profile.meta["calibration"]["measured_step_s"] > 0
    assert json.loads(out.read_text())["host"]["threads"] >= 1
    # the simulator reproduces the calibration run's step (or is slower when the host beat it)
    order = load_schedule("gpipe").expand(ranks=2, microbatches=4)
    program = lower(order, None, costs=c)
    predicted = simulate(program, c).makespan
    measured = profile.meta["calibration"]["measured_step_s"]
    if c.cores < profile.meta["calibration"]["physical_cores"]:
        assert predicted == pytest.approx(measured, rel=1e-2)
    else:
        assert predicted >= measured


def test_profile_ranks_needs_stages_a_multiple_of_ranks():
    from ppc.measure.profile import ProfileRequest

    with pytest.raises(CostError, match=r"--ranks 3 needs the stages \(4\) to be a multiple"):
        ProfileRequest(model="tiny-llama", stages=4, ranks=3)


def test_profile_ranks_on_cuda_is_one_line_exit_2(tmp_path):
    done = ppc("profile", "--model", "tiny-llama", "--stages", "2", "--device", "cuda", "--ranks", "2",
               "-o", str(tmp_path / "c.json"), timeout=120)
    assert done.returncode == 2 and "--ranks needs --device cpu" in done.stderr
    assert "Traceback" not in done.stderr

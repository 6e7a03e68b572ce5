"""How `ppc run` ends when things go wrong (issue 15): Ctrl-C / SIGTERM, a killed launcher,
a stopped rank, a non-finite loss. Each slow test starts 2 gloo ranks of tiny-llama.

The bounds asserted are the issue's with a margin for this shared 2-core machine
(interrupt: 5 s -> 15 s); the launcher-kill bound (no worker alive after 10 s) is asserted
as stated: the kernel ends the workers at once (parent-death signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from ppc.exec.launch import Failure, describe_failure, read_status

RUN = ["run", "--model", "tiny-llama", "--schedule", "1f1b", "--ranks", "2", "--microbatches", "2",
       "--seq-len", "16", "--device", "cpu", "--quiet"]


def _start(*extra: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ppc", *RUN, *extra], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env})


def _running(status_dir: Path, proc: subprocess.Popen, *, step: int = 1, ranks: int = 2) -> list[int]:
    """Wait until every rank has reached `step` (1-based, started); their pids."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        states = [read_status(status_dir, r) for r in range(ranks)] if status_dir.is_dir() else []
        if len(states) == ranks and all(s is not None and s[1] + 1 >= step for s in states):
            return [s[0] for s in states]
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"ranks never reached step {step}: {proc.communicate()[1][-2000:]}")


def _alive(pid: int) -> bool:
    """Running or stopped (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _status_dir(tmp: Path, proc: subprocess.Popen) -> Path:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = list(tmp.glob("ppc-status-*"))
        if found:
            return found[0]
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no status directory appeared: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_is_one_line_exit_130_no_orphans(tmp_path, sig):
    proc = _start("--steps", "100000", env={"TMPDIR": str(tmp_path)})
    try:
        status_dir = _status_dir(tmp_path, proc)
        pids = _running(status_dir, proc)
        proc.send_signal(sig)
        sent = time.time()
        _, err = proc.communicate(timeout=60)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == ["ppc: interrupted"], err[-2000:]
    assert took < 15, f"interrupt took {took:.1f} s"
    assert not any(_alive(pid) for pid in pids)
    assert not list(tmp_path.glob("ppc-status-*")), "the status directory was left behind"


@pytest.mark.slow
def test_killed_launcher_takes_its_workers_along(tmp_path):
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    proc = _start("--steps", "100000", env={"PPC_STATUS_DIR": str(status_dir)})
    try:
        pids = _running(status_dir, proc)
        proc.kill()
        killed = time.time()
        proc.wait(timeout=30)
        while time.time() - killed < 10 and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        left = [pid for pid in pids if _alive(pid)]
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} still alive 10 s after kill -9 of the launcher"


@pytest.mark.slow
def test_stopped_rank_is_the_one_named(tmp_path):
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    proc = _start("--steps", "100000", "--timeout", "5", env={"PPC_STATUS_DIR": str(status_dir)})
    try:
        pids = _running(status_dir, proc, step=2)
        os.kill(pids[1], signal.SIGSTOP)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1
    assert last.startswith("ppc: run failed: rank 1 was stopped (SIGSTOP) at instruction"), err[-2000:]


@pytest.mark.slow
def test_nonfinite_gradient_stops_the_run_naming_step_and_rank(tmp_path):
    # an lr of 1e30 makes every weight ~1e30 after step 1: step 2's gradients are nan
    proc = _start("--steps", "4", "--lr", "1e30", "--warmup", "0", env={})
    _, err = proc.communicate(timeout=240)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1
    assert "NonFiniteError: gradient norm is nan at step 2 (non-finite gradients on ranks 0, 1)" in last, err
    assert "Traceback" not in err


def test_hung_rank_is_the_silent_one_with_the_oldest_status(tmp_path):
    """Rank 1 hung (no error, stopped by the launcher); ranks 0 and 2 timed out waiting."""
    for rank, (step, ins) in enumerate([(4, "0F2"), (3, "1B1"), (4, "2F3")]):
        (tmp_path / f"rank-{rank}.status").write_text(f"{100 + rank} {step} {ins}")
    for rank in (0, 2):
        (tmp_path / f"rank-{rank}.error").write_text(
            f"{time.time()}\nrank {rank} failed at instruction x: RuntimeError: Timed out waiting 5000ms for recv\n")

    now = time.time()
    watch = SimpleNamespace(stopped={}, last_change={0: now - 6, 1: now - 9, 2: now - 5})
    failures = [Failure(rank=0, exitcode=1), Failure(rank=1, exitcode=-signal.SIGTERM),
                Failure(rank=2, exitcode=1)]
    line = describe_failure(tmp_path, failures, watch)
    assert line.startswith("rank 1 hung at instruction 1B1 (step 4): no progress for 9 s"), line
    assert describe_failure(tmp_path, failures).startswith("rank 0 failed")  # without a watch: as before

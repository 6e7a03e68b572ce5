"""`ppc run` end to end: bad input exits 2 with one line; a killed rank ends the run; the
GPU benchmark script runs on CPU with a tiny model. (The CLI pipeline against --reference:
tests/test_exec_dp.py and tests/test_torchrun.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ppc

from ppc.cli import main

BASE = ["run", "--model", "tiny-llama", "--ranks", "4", "--microbatches", "4",
        "--microbatch-size", "1", "--seq-len", "16", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--schedule", "no_such_schedule"], "no_such_schedule"),
        (["--schedule", "1f1b", "--nproc-per-node", "2"], "world size 2 != schedule ranks 4"),
        (["--schedule", "1f1b", "--data", "/nonexistent/corpus.txt"], "data file not found"),
        (["--schedule", "1f1b", "--seq-len", "100000000"], "exceeds"),
        (["--schedule", "1f1b", "--model", "no-such-model"], "no-such-model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(extra, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*BASE, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_injected_exception_names_rank_and_instruction(tmp_path):
    result = ppc(*BASE, "--schedule", "1f1b", "--steps", "3", "--nproc-per-node", "4",
                  env={"PPC_FAULT_AT": "2:2:2F1", "PPC_STATUS_DIR": str(tmp_path)})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "rank 2 failed at instruction 2F1 (step 2)" in last


@pytest.mark.slow
def test_killed_rank_ends_the_run_in_bounded_time(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppc", *BASE, "--schedule", "1f1b", "--steps", "100000",
         "--nproc-per-node", "4"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PPC_STATUS_DIR": str(tmp_path)},
    )
    try:
        status = tmp_path / "rank-2.status"
        deadline = time.time() + 200
        while time.time() < deadline:
            fields = status.read_text().split() if status.exists() else []
            if len(fields) >= 3 and int(fields[1]) >= 1:
                break
            time.sleep(0.2)
        else:
            pytest.fail("rank 2 never reached step 2")
        os.kill(int(fields[0]), signal.SIGKILL)
        killed = time.time()
        _, err = proc.communicate(timeout=60)
        assert time.time() - killed < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "rank 2 was killed by SIGKILL at instruction" in err.strip().splitlines()[-1]


@pytest.mark.slow
def test_benchmark_script_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "ppc.exec.benchmark", "--model", "tiny-llama", "--device", "cpu",
         "--seq-len", "16", "--microbatches", "4", "--steps", "2", "--skip", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["comm_instructions"] == 0 and report["stages"] == 4
    assert report["ppc"]["losses"] == pytest.approx(report["plain"]["losses"], rel=1e-5)
    assert report["ppc"]["tokens_per_s"] > 0 and report["throughput_ratio"] > 0

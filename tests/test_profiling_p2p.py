"""`ppc profile --p2p`: two real gloo processes measure latency and bandwidth into "comm"."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ppc.cli import main
from ppc.costs import CostModel
from ppc.errors import CostError
from ppc.measure.p2p import measure_p2p


@pytest.mark.slow
def test_profile_with_p2p_writes_comm(tmp_path, capsys):
    out = tmp_path / "costs.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--model", "tiny-llama", "--stages", "2", "--seq-len", "16", "--no-layers",
              "--warmup", "0", "--repeats", "1", "--p2p", "--p2p-mib", "1", "-o", str(out)])
    assert exit_info.value.code == 0
    assert "point-to-point gloo: latency" in capsys.readouterr().out
    data = json.loads(out.read_text())
    latency, bandwidth = data["comm"]["latency"], data["comm"]["bandwidth"]
    assert 0 < latency < 1 and math.isfinite(latency)
    assert 1e6 < bandwidth < 1e13 and math.isfinite(bandwidth)
    assert data["meta"]["p2p"].startswith("gloo:")
    costs = CostModel.load(str(out), 2)
    assert (costs.latency, costs.bandwidth) == (latency, bandwidth)
    assert costs.transfer(2**20) == pytest.approx(latency + 2**20 / bandwidth)


@pytest.mark.slow
def test_large_message_takes_longer_than_latency():
    result = measure_p2p("cpu", large_bytes=4 * 2**20, repeats=3, warmup=1)
    assert result.backend == "gloo" and result.large_bytes == 4 * 2**20
    assert result.latency > 0 and math.isfinite(result.bandwidth) and result.bandwidth > 0
    assert result.large_bytes / result.bandwidth > result.latency  # 4 MiB costs more than a tiny message


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="needs a machine with fewer than two GPUs")
def test_cuda_without_two_gpus_is_a_cost_error():
    with pytest.raises(CostError, match="needs two GPUs"):
        measure_p2p("cuda")

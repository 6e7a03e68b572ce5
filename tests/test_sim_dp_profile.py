"""`ppc profile --p2p` also measures all-reduces and fits the ring model's collective terms."""

from __future__ import annotations

import json
import math

import pytest

from ppc.costs import CostModel
from ppc.measure.p2p import fit_ring


@pytest.mark.parametrize("replicas", [2, 4, 8])
def test_ring_fit_recovers_the_model_it_inverts(replicas):
    truth = CostModel.from_dict({"collective": {"latency": 3e-5, "bandwidth": 2e9}}, 1)
    small, large = truth.all_reduce(8, replicas), truth.all_reduce(2**24, replicas)
    latency, bandwidth = fit_ring(small, large, small_bytes=8, large_bytes=2**24, replicas=replicas)
    assert latency == pytest.approx(3e-5) and bandwidth == pytest.approx(2e9)


@pytest.mark.slow
def test_profile_p2p_writes_the_collective_terms(tmp_path):
    from ppc.cli import main

    out = tmp_path / "costs.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--model", "tiny-llama", "--stages", "2", "--seq-len", "16", "--no-layers",
              "--warmup", "0", "--repeats", "1", "--p2p", "--p2p-mib", "2", "-o", str(out)])
    assert exit_info.value.code == 0
    data = json.loads(out.read_text())
    latency, bandwidth = data["collective"]["latency"], data["collective"]["bandwidth"]
    assert 0 <= latency < 1 and 1e6 < bandwidth < 1e13 and math.isfinite(bandwidth)
    assert "all-reduce (ring fit)" in data["meta"]["p2p"]
    costs = CostModel.load(str(out), 2)
    assert (costs.collective_latency, costs.collective_bandwidth) == (latency, bandwidth)
    # the large all-reduce costs more than its latency terms alone
    assert costs.all_reduce(2 * 2**20, 2) > 2 * latency

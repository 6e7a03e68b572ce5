"""`ppc profile` on CPU with tiny-llama: real measurements, in the costs JSON format."""

from __future__ import annotations

import pytest

from ppc.cli import main
from ppc.costs import CostModel
from ppc.plan.cost_profile import CostProfile


@pytest.mark.slow  # a profile run
def test_profile_tiny_llama_cli(tmp_path):
    out = tmp_path / "costs.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--model", "tiny-llama", "--stages", "2", "--seq-len", "16", "--warmup", "1",
              "--repeats", "2", "--device", "cpu", "-o", str(out)])
    assert exit_info.value.code == 0
    profile = CostProfile.load(out)
    c = profile.stage_costs
    assert c.unit == "s" and c.stages == 2
    assert all(f > 0 for f in c.forward) and all(c.backward(s) > 0 for s in range(2))
    assert all(a > 0 for a in c.activation_bytes)
    assert profile.stage_output_bytes[0] > 0 and sum(profile.stage_params) > 0
    # B is measured whole; I + W are scaled to it
    assert [c.backward(s) for s in range(2)] == pytest.approx(profile.meta["B"])
    # per-layer costs regroup into the same number of stages
    assert profile.layers and len(profile.layers) >= 2
    assert profile.grouped((1, len(profile.layers) - 1)).costs.stages == 2
    assert CostModel.load(str(out), 2).forward == c.forward

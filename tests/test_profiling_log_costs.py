"""The opt_prime log parser and the costs derived from the case-study log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ppc.errors import CostError
from ppc.plan.log_costs import (
    LlamaShape,
    derive_costs,
    layer_costs,
    logged_split,
    parse_log,
    read_log,
    stage_forward_ms,
)

LOG = Path(__file__).parent / "data" / "opt_prime_llama1b_pp8_a40.log"


@pytest.fixture(scope="module")
def run():
    return read_log(LOG)


def test_settings_and_counts(run):
    assert (run.stages, run.microbatches, run.microbatch_size) == (8, 32, 1)
    assert run.total_params == 1_235_814_400
    assert run.steps() == tuple(range(1, 21))
    assert len(run.records) == 8 * 20
    assert sum(len(r.layers) for r in run.records) == 500
    assert len(run.step_ms) == 20 and run.step_ms[0] == 7289.55 and run.step_ms[-1] == 1581.34


def test_every_logged_millisecond_is_read_once(run):
    text = LOG.read_text()
    logged = sum(float(ms) for ms in re.findall(r"total=([\d.]+)ms", text))
    assert sum(r.total_ms for r in run.records) == pytest.approx(logged, abs=1e-6)


def test_stage_totals_equal_the_log(run):
    by_key = {(r.stage, r.step): r for r in run.records}
    assert by_key[(7, 2)].total_ms == pytest.approx(9.994 + 38.362 + 36.510 + 131.423)
    assert [e.layer for e in by_key[(7, 2)].layers] == ["13", "14", "15", "lm_head"]
    assert by_key[(1, 20)].total_ms == pytest.approx(12.580 + 44.021 + 31.591)


def test_interleaved_headers_are_dealt_round_robin(run):
    # line 373 holds the headers of stage 0 and stage 3 (step 2); their entries alternate
    by_key = {(r.stage, r.step): r for r in run.records}
    s0, s3 = by_key[(0, 2)], by_key[(3, 2)]
    assert [(e.layer, e.total_ms) for e in s0.layers] == [("embed", 0.739), ("0", 40.903), ("1", 30.691)]
    assert [(e.layer, e.total_ms) for e in s3.layers] == [("5", 10.070), ("6", 41.273), ("7", 29.263)]


def test_stage_forward_is_the_median_per_microbatch(run):
    forward = stage_forward_ms(run)
    totals = sorted(r.total_ms for r in run.stage_steps(7) if r.step > 1)
    assert forward[7] == pytest.approx((totals[9]) / 32)  # 19 steps: the 10th is the median
    assert max(forward) == forward[7] and forward[7] > 2.4 * max(forward[:7])


def test_partial_layers_are_summed_and_split_by_majority(run):
    layers = {layer.name: layer for layer in layer_costs(run)}
    assert len(layers) == 18
    assert layers["1"].pieces == ((0, 7), (1, 1)) and layers["1"].ops_per_microbatch == 8
    assert layers["lm_head"].forward_ms > 3 * layers["14"].forward_ms
    assert logged_split(layer_costs(run), 8) == (3, 2, 2, 2, 2, 2, 2, 3)


def test_derived_costs_follow_the_stated_assumptions(run):
    profile = derive_costs(run, backward_factor=2.0)
    c = profile.stage_costs
    assert c.unit == "s" and c.stages == 8
    assert c.forward[7] == pytest.approx(stage_forward_ms(run)[7] / 1000)
    assert all(c.backward(s) == pytest.approx(2 * c.forward[s]) for s in range(8))
    assert sum(layer.params for layer in profile.layers) == run.total_params + LlamaShape().vocab * 2048
    assert profile.grouped(profile.split).params[0] == 262_668_288 + 2 * 60_821_504


def test_scale_multiplies_every_time(run):
    one, two = derive_costs(run), derive_costs(run, scale=2.0)
    assert two.stage_costs.forward == pytest.approx(tuple(2 * f for f in one.stage_costs.forward))
    assert two.layers[5].backward_weight == pytest.approx(2 * one.layers[5].backward_weight)


def test_not_a_log_is_an_error():
    with pytest.raises(CostError, match="no per-layer forward times"):
        parse_log("hello\nworld\n", source="x.log")
    with pytest.raises(CostError, match="no such log"):
        read_log("/nonexistent/x.log")

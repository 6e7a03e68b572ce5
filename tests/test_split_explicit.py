"""Explicit blocks per stage: `split(gm, S, by=(3, 2, 2, 1))`, `ppc run --split 3,2,2,1`,
and `ppc plan` handing the planned split to `ppc run`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from ppc.cli import main
from ppc.errors import ModelError
from ppc.frontend import build_model, build_split, split, trace

SEQ = 16
RUN = ["run", "--model", "tiny-llama", "--schedule", "1f1b", "--ranks", "4", "--microbatches", "4",
       "--microbatch-size", "1", "--seq-len", str(SEQ), "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def traced():
    model = build_model("tiny-llama", seed=1)
    ids = torch.randint(0, 256, (2, SEQ), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    with torch.no_grad():
        eager = model(**batch).loss.item()
    return trace(model, batch), batch, eager


@pytest.mark.parametrize("sizes", [(3, 2, 2, 1), (1, 1, 1, 5), (5, 3)])
def test_explicit_sizes_give_those_blocks_and_eager_loss(traced, sizes):
    gm, batch, eager = traced
    result = split(gm, len(sizes), by=sizes)
    assert tuple(len(s.layers) for s in result.stages) == sizes == result.sizes
    assert result.by == ",".join(map(str, sizes))
    assert [layer for s in result.stages for layer in s.layers] == list(result.blocks)
    with torch.no_grad():
        assert result.module(**batch).item() == pytest.approx(eager, abs=1e-5)


@pytest.mark.parametrize(("sizes", "needle"), [
    ((3, 2, 2), "expected 4 blocks-per-stage counts"),
    ((3, 2, 2, 2), "summing to the model's 8 blocks (got 4 counts summing to 9)"),
    ((4, 0, 2, 2), "each at least 1"),
])
def test_bad_sizes_are_model_errors_naming_the_total(traced, sizes, needle):
    gm, _, _ = traced
    with pytest.raises(ModelError) as info:
        split(gm, 4, by=sizes)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_build_split_takes_sizes():
    result = build_split("tiny-llama", stages=4, seq_len=SEQ, microbatch_size=1, by=(2, 1, 1, 4))
    assert result.sizes == (2, 1, 1, 4)
    assert result.graph.num_stages == 4


@pytest.mark.parametrize(("value", "needle"), [
    ("3,2,2", "summing to the model's 8 blocks"),
    ("3,2,2,2", "got 4 counts summing to 9"),
    ("3,x,2,2", "--split must be one of cost, layers, params or blocks per stage"),
    ("4,0,2,2", "every stage needs at least 1 block"),
])
def test_run_with_a_bad_split_exits_2_with_one_line(value, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*RUN, "--split", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_run_with_explicit_split_equals_reference(tmp_path):
    def ppc(*args):
        done = subprocess.run([sys.executable, "-m", "ppc", *args], capture_output=True, text=True,
                              timeout=300, env=dict(os.environ), check=False)
        assert done.returncode == 0, done.stderr[-2000:]

    common = [*RUN, "--steps", "2", "--lr", "1e-3"]
    ppc(*common, "--split", "1,3,3,1", "--nproc-per-node", "4", "--metrics", str(tmp_path / "p.jsonl"))
    ppc(*common, "--reference", "--metrics", str(tmp_path / "r.jsonl"))
    pipe, ref = ([json.loads(x)["loss"] for x in (tmp_path / f).read_text().splitlines()]
                 for f in ("p.jsonl", "r.jsonl"))
    assert pipe == pytest.approx(ref, rel=1e-4) and len(pipe) == 2


COSTS = "docs/costs/llama1b_pp8_a40_calibrated.json"  # units: embed, layers 0..15, lm_head


def _plan(capsys, tmp_path, ranks: int) -> str:
    args = ["plan", "--costs", COSTS, "--ranks", str(ranks), "--global-batch", "32", "--schedules", "1f1b",
            "--virtual", "1", "--microbatch-sizes", "1", "--no-auto-zb", "--model", "llama-3.2-1b",
            "-o", str(tmp_path / "plan.ppc")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_plan_emits_blocks_per_stage_for_ppc_run(capsys, tmp_path):
    from ppc.profiling.cost_profile import CostProfile

    out = _plan(capsys, tmp_path, 4)
    planned = re.search(r"winner: 1f1b V=1 M=32x1 split=([\d/]+)", out).group(1)
    units = tuple(int(n) for n in planned.split("/"))
    blocks = tuple(int(n) for n in re.search(r"--split ([\d,]+)", out).group(1).split(","))
    assert sum(units) == 18 and sum(blocks) == 16  # embed and lm_head are units, not blocks
    assert blocks == (units[0] - 1, *units[1:-1], units[-1] - 1)
    names = [u.name for u in CostProfile.load(COSTS).layer_units()]
    assert names[0] == "embed" and names[-1] == "lm_head"


def test_plan_keeps_a_split_with_the_head_alone_as_a_comment(capsys, tmp_path):
    out = _plan(capsys, tmp_path, 8)
    assert "--split" not in out.split("#")[0]
    assert "planned units per stage: 3,2,2,2,2,3,3,1; not expressible as --split" in out

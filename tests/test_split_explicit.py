"""Explicit blocks per stage: `split(gm, S, by=(3, 2, 2, 1))`, `ppc run --split 3,2,2,1`,
a first / last stage without blocks (`by=(0, 4, 4, 0)`: the embedding alone, the head
alone), and `ppc plan` handing the planned split to `ppc run`."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import ppc

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


@pytest.mark.parametrize("sizes", [(0, 3, 3, 2), (2, 3, 3, 0), (0, 4, 4, 0)])
def test_a_first_or_last_stage_without_blocks_gives_eager_loss(traced, sizes):
    gm, batch, eager = traced
    result = split(gm, len(sizes), by=sizes)
    assert tuple(len(s.layers) for s in result.stages) == sizes == result.sizes
    with torch.no_grad():
        assert result.module(**batch).item() == pytest.approx(eager, abs=1e-5)
    first, last = result.stages[0], result.stages[-1]
    kinds = {str(n.target) for n in first.module.graph.nodes if n.op == "call_module"}
    if sizes[0] == 0:  # the embedding alone: token ids in, embeddings out
        assert kinds == {"model.embed_tokens"}
        assert first.inputs == ("input_ids",) and first.outputs == ("model_embed_tokens",)
        assert [v.consumers for v in result.graph.values if v.name == "model_embed_tokens"] == [(1,)]
    if sizes[-1] == 0:  # final norm, lm_head and loss: the last block's output in, loss out
        modules = {str(n.target) for n in last.module.graph.nodes if n.op == "call_module"}
        assert modules == {"lm_head"} and not any("layers" in name for name in last.param_names.values())
        assert last.inputs[0] == "model_layers_7" and last.outputs == (result.loss_name,)
    # masks and rotary tables: made on stage 0, recomputed on the other stages with blocks, never sent
    recomputed = {v.name: (v.producer, v.consumers) for v in result.graph.values if v.recompute}
    with_blocks = tuple(s for s, n in enumerate(sizes) if n and s > 0)
    assert recomputed and set(recomputed.values()) == {(0, with_blocks)}
    assert not any(v.spec is None for v in result.graph.values if not v.recompute)


def test_tied_weight_is_shared_by_the_embedding_and_head_alone():
    result = build_split("tiny-llama-tied", stages=4, seq_len=SEQ, microbatch_size=1, by=(0, 4, 4, 0))
    (tied,) = result.graph.tied
    assert tied.name == "model.embed_tokens.weight" and tied.stages == (0, 3)
    assert tied.spec.shape == (256, 64)
    assert result.stages[0].params == result.stages[-1].params - 64  # the head stage adds the norm
    sent = {v.name: (v.producer, v.consumers, v.spec.shape) for v in result.graph.values
            if v.producer >= 0 and not v.recompute}
    assert sent == {"model_embed_tokens": (0, (1,), (1, SEQ, 64)), "model_layers_3": (1, (2,), (1, SEQ, 64)),
                    "model_layers_7": (2, (3,), (1, SEQ, 64))}


def test_stage_costs_put_the_embedding_and_head_on_their_own_stages(traced):
    from ppc.frontend.split import stage_costs

    gm, _, _ = traced
    result = split(gm, 4, by=(0, 4, 4, 0))
    costs = stage_costs(result)
    before, after = result.edge_flops
    assert costs[0] == before > 0 and costs[-1] == after > 0
    assert sum(costs) == pytest.approx(sum(result.unit_flops))
    assert costs[1] == pytest.approx(costs[2])  # four identical blocks each


@pytest.mark.parametrize(("sizes", "needle"), [
    ((3, 2, 2), "expected 4 blocks-per-stage counts"),
    ((3, 2, 2, 2), "summing to the model's 8 blocks (got 4 counts summing to 9)"),
    ((4, 0, 2, 2), "each at least 1"),
    ((4, 0, 2, 2), "stage 1 has 0 blocks; a middle stage needs each at least 1 block"),
    ((0, 4, 0, 4), "stage 2 has 0 blocks"),
    ((0, 8, 0, 0), "stage 2 has 0 blocks"),
    ((-1, 5, 2, 2), "each at least 1 (0 allowed for the first and last stage)"),
    ((0, 4, 3, 0), "got 4 counts summing to 7"),
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


def _ppc_ok(*args: str) -> None:
    done = ppc(*args)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_run_with_explicit_split_equals_reference(tmp_path):
    common = [*RUN, "--steps", "2", "--lr", "1e-3"]
    _ppc_ok(*common, "--split", "1,3,3,1", "--nproc-per-node", "4", "--metrics", str(tmp_path / "p.jsonl"))
    _ppc_ok(*common, "--reference", "--metrics", str(tmp_path / "r.jsonl"))
    pipe, ref = ([json.loads(x)["loss"] for x in (tmp_path / f).read_text().splitlines()]
                 for f in ("p.jsonl", "r.jsonl"))
    assert pipe == pytest.approx(ref, rel=1e-4) and len(pipe) == 2


@pytest.mark.slow
def test_run_with_embedding_and_head_alone_equals_reference(tmp_path):
    common = [*RUN, "--steps", "2", "--lr", "1e-3"]
    common[common.index("tiny-llama")] = "tiny-llama-tied"
    common[common.index("1f1b")] = "zb_h1"
    _ppc_ok(*common, "--split", "0,4,4,0", "--nproc-per-node", "4", "--metrics", str(tmp_path / "p.jsonl"))
    _ppc_ok(*common, "--reference", "--metrics", str(tmp_path / "r.jsonl"))
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
    from ppc.plan.cost_profile import CostProfile

    out = _plan(capsys, tmp_path, 4)
    planned = re.search(r"winner: 1f1b V=1 M=32x1 split=([\d/]+)", out).group(1)
    units = tuple(int(n) for n in planned.split("/"))
    blocks = tuple(int(n) for n in re.search(r"--split ([\d,]+)", out).group(1).split(","))
    assert sum(units) == 18 and sum(blocks) == 16  # embed and lm_head are units, not blocks
    assert blocks == (units[0] - 1, *units[1:-1], units[-1] - 1)
    names = [u.name for u in CostProfile.load(COSTS).layer_units()]
    assert names[0] == "embed" and names[-1] == "lm_head"


def test_plan_gives_the_head_alone_as_a_last_stage_without_blocks(capsys, tmp_path):
    out = _plan(capsys, tmp_path, 8)
    assert "winner: 1f1b V=1 M=32x1 split=3/2/2/2/2/3/3/1" in out
    assert "--split 2,2,2,2,2,3,3,0" in out and "not expressible" not in out


@pytest.mark.parametrize(("split_units", "units", "blocks"), [
    ((1, 8, 9), ("embed", *map(str, range(16)), "lm_head"), (0, 8, 8)),
    ((3, 14, 1), ("embed", *map(str, range(16)), "lm_head"), (2, 14, 0)),
    ((1, 16, 1), ("embed", *map(str, range(16)), "lm_head"), (0, 16, 0)),
    ((2, 2), ("0", "1", "2", "3"), (2, 2)),
    ((1, 1), ("embed", "lm_head"), None),
    ((2, 2), ("stage0", "stage1", "stage2", "stage3"), None),
])
def test_block_split_maps_plan_units_to_blocks(split_units, units, blocks):
    from ppc.plan.report import block_split

    assert block_split(split_units, units) == blocks

"""Resumable checkpoints without launching ranks: one process writes a real checkpoint of
tiny-llama-tied (the whole model on one stage, after one AdamW step) with
torch.distributed.checkpoint, and the tests read it back under another split, refuse what
cannot be resumed with one line, and prove that nothing is unpickled on the way."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import refused
from ppc.exec.checkpoint import full_names, load_resumable, save_resumable
from ppc.exec.config import RunConfig
from ppc.exec.optim import make_adamw
from ppc.exec.plan import build_plan
from ppc.exec.preflight import check_resume
from ppc.exec.resume import FORMAT, run_meta

from ppc.cli import main
from ppc.errors import RunError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

CONFIG = RunConfig(model="tiny-llama-tied", schedule="1f1b", ranks=1, microbatches=2, seq_len=16, steps=2,
                   lr=1e-3, warmup=1)
RUN = ["run", "--model", "tiny-llama-tied", "--schedule", "1f1b", "--ranks", "2", "--microbatches", "2",
       "--seq-len", "16", "--steps", "2", "--lr", "1e-3", "--warmup", "1", "--device", "cpu", "--quiet"]
"""The CLI twin of CONFIG, on 2 ranks: another layout of the same trajectory."""
TIED = "model.embed_tokens.weight"


@dataclasses.dataclass
class Written:
    root: Path
    step_dir: Path
    params: dict[str, torch.Tensor]
    states: dict[str, dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Written:
    root = tmp_path_factory.mktemp("ck")
    plan = build_plan(CONFIG)
    named = full_names({0: plan.materialize(0, torch.device("cpu"))}, plan.split.stages)
    optimizer = make_adamw(list(named.values()), lr=CONFIG.lr, weight_decay=CONFIG.weight_decay)
    generator = torch.Generator().manual_seed(0)
    for p in named.values():
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    step_dir = save_resumable(str(root), step=1, rank=0, params=named, optimizer=optimizer,
                              meta=run_meta(CONFIG, plan.program, plan.split))
    states = {n: {k: v.clone() for k, v in optimizer.state[p].items()} for n, p in named.items()}
    return Written(root=root, step_dir=step_dir, params={n: p.detach().clone() for n, p in named.items()},
                   states=states)


def _stages(config: RunConfig):
    """Every stage of `config`'s plan, zeroed, with its own AdamW: what each rank holds."""
    plan = build_plan(config)
    held = []
    for stage in range(plan.program.stages):
        module = plan.materialize(stage, torch.device("cpu"))
        with torch.no_grad():
            for p in module.parameters():
                p.zero_()
        named = full_names({stage: module}, plan.split.stages)
        held.append((named, make_adamw(list(named.values()), lr=config.lr, weight_decay=config.weight_decay)))
    return plan, held


def test_layout_is_json_and_safetensors_keyed_by_full_names(written):
    assert (written.root / "latest").read_text().strip() == "step-000001"
    files = sorted(p.name for p in written.step_dir.iterdir())
    assert files == ["meta.json", "shard-00001-model-00001-of-00001.safetensors"]
    record = json.loads((written.step_dir / "meta.json").read_text())
    assert (record["format"], record["step"], record["data_position"]) == (FORMAT, 1, 2)
    from safetensors import safe_open

    with safe_open(str(written.step_dir / files[1]), framework="pt") as f:
        keys = set(f.keys())
    assert TIED in keys and "lm_head.weight" not in keys, "a tied weight is stored once, under its first name"
    assert "model.layers.7.mlp.down_proj.weight" in keys
    assert f"optim.state.{TIED}.exp_avg_sq" in keys and "optim.state.model.norm.weight.step" in keys
    assert len(keys) == 4 * len(written.params)


def test_resumes_under_another_split_by_full_names(written):
    config = dataclasses.replace(CONFIG, ranks=2, split="3,5")
    plan, held = _stages(config)
    meta = run_meta(config, plan.program, plan.split)
    for named, optimizer in held:
        assert load_resumable(str(written.root), params=named, optimizer=optimizer, meta=meta) == 1
        for name, p in named.items():
            assert torch.equal(p, written.params[name]), name
            for key, value in written.states[name].items():
                assert torch.equal(optimizer.state[p][key], value), (name, key)
    # the tied embedding is on both stages (the LM head of the last one)
    assert all(TIED in named for named, _ in held)
    assert sum(len(named) for named, _ in held) == len(written.params) + 1


def test_load_unpickles_nothing(written, monkeypatch, tmp_path):
    """A full load with every unpickling entry point booby-trapped, and a DCP-style
    .metadata pickle that would run code planted in the checkpoint: never touched."""
    copy = tmp_path / "ck"
    shutil.copytree(written.root, copy)
    marker = tmp_path / "code-ran"
    (copy / "step-000001" / ".metadata").write_bytes(pickle.dumps(_Bomb(marker)))

    def trap(*args, **kwargs):
        raise AssertionError("the checkpoint load unpickled something")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, trap)
    plan, [(named, optimizer)] = _stages(CONFIG)
    load_resumable(str(copy), params=named, optimizer=optimizer, meta=run_meta(CONFIG, plan.program, plan.split))
    assert torch.equal(named[TIED], written.params[TIED])
    assert not marker.exists()


class _Bomb:
    """Unpickling it creates `marker` (stands for any code a pickle can run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_older_per_rank_pickles_are_refused_unread(tmp_path, capsys, no_launch):
    marker = tmp_path / "code-ran"
    step = tmp_path / "ck" / "step-000002"
    step.mkdir(parents=True)
    (step / "rank-0.pt").write_bytes(pickle.dumps({"meta": _Bomb(marker)}))
    (tmp_path / "ck" / "latest").write_text("step-000002\n")
    with pytest.raises(RunError, match=r"step-000002 was written by an older ppc: per-rank pickle files"):
        load_resumable(str(tmp_path / "ck"), params={}, optimizer=None, meta={})
    line = refused([*RUN, "--resume", str(tmp_path / "ck")], capsys)
    assert line.startswith(f"ppc: checkpoint {step} was written by an older ppc")
    assert not marker.exists()


@pytest.mark.parametrize("layout", [["--schedule", "gpipe"], ["--split", "2,6"], ["--schedule", "zbv"],
                                    ["--ranks", "4", "--microbatches", "2"],
                                    ["--microbatches", "1", "--microbatch-size", "2"],
                                    ["--dp", "2", "--microbatches", "1"]])
def test_another_layout_passes_the_preflight(written, layout, no_launch):
    args = list(RUN)
    for flag, value in zip(layout[::2], layout[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    with pytest.raises(AssertionError, match="the preflight passed"):
        main([*args, "--resume", str(written.root)])


def _damaged(written: Written, tmp_path: Path) -> tuple[Path, Path, Path]:
    copy = tmp_path / "ck"
    shutil.copytree(written.root, copy)
    step = copy / "step-000001"
    return copy, step, step / "shard-00001-model-00001-of-00001.safetensors"


def test_refusals_name_the_problem(written, tmp_path):
    plan = build_plan(CONFIG)
    copy, step, shard = _damaged(written, tmp_path)

    def refused(config: RunConfig = CONFIG) -> str:
        with pytest.raises(RunError) as info:
            check_resume(dataclasses.replace(config, resume=str(copy)), plan)
        return str(info.value)

    check_resume(dataclasses.replace(CONFIG, resume=str(copy)), plan)  # intact: accepted
    for change, text in [({"lr": 2e-3}, "lr=0.001, this run has 0.002: resume with the same --lr"),
                         ({"microbatches": 4}, (r"written with a global batch of 2 sequences \(dp 1 x microbatches 2 x "
                                               r"microbatch-size 1\); this run has 4 sequences \(dp 1 x microbatches 4 "
                                               r"x microbatch-size 1\): resume with the same product --dp x "
                                               r"--microbatches x --microbatch-size \(or start a new run\)$")),
                         ({"steps": 3}, "steps=2, this run has 3"), ({"seed": 1}, "seed=0, this run has 1")]:
        config = dataclasses.replace(CONFIG, **change)
        changed = build_plan(config) if "microbatches" in change else plan
        with pytest.raises(RunError, match=text):
            check_resume(dataclasses.replace(config, resume=str(copy)), changed)
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    assert refused() == f"checkpoint {shard} is truncated ({len(data) - 100} bytes, its header describes {len(data)})"
    shard.write_bytes(data[:5])
    assert refused() == f"checkpoint {shard} is truncated or not a safetensors file"
    shard.unlink()
    assert "holds no tensor files (*.safetensors): incomplete" in refused()
    (step / "other.safetensors").write_bytes(data)
    shutil.copy(written.step_dir / shard.name, shard)
    assert refused() == f"checkpoint {step} holds {TIED} twice (a stray file such as {shard.name}?)"
    (step / "other.safetensors").unlink()
    record = json.loads((step / "meta.json").read_text())
    (step / "meta.json").write_text(json.dumps({**record, "format": None}))
    assert f"checkpoint {step} was written by an older ppc or another tool" in refused()
    (step / "meta.json").write_text(json.dumps({k: v for k, v in record.items() if k != "sequences_per_step"}))
    assert "does not record sequences_per_step (written by an older ppc)" in refused()
    (step / "meta.json").unlink()
    assert refused() == f"checkpoint {step} is incomplete or not a ppc checkpoint (no meta.json)"


def test_a_foreign_model_is_refused_by_its_weights(written, tmp_path):
    """A checkpoint of the untied model recorded as the tied one (a hand-edited record):
    its weights give it away."""
    copy, step, _ = _damaged(written, tmp_path)
    config = dataclasses.replace(CONFIG, model="tiny-llama", resume=str(copy))
    record = json.loads((step / "meta.json").read_text())
    (step / "meta.json").write_text(json.dumps({**record, "model": "tiny-llama"}))
    with pytest.raises(RunError, match=f"checkpoint {step} holds no weight lm_head.weight: it is incomplete"):
        check_resume(config, build_plan(config))


@pytest.mark.parametrize("cut", [{"microbatches": 1, "microbatch_size": 2}, {"dp": 2, "microbatches": 1}])
def test_another_cut_of_the_same_global_batch_resumes(written, cut):
    """dp, microbatches and microbatch size may change when their product (2 sequences)
    does not: the preflight passes and every stage loads its weights and AdamW state."""
    config = dataclasses.replace(CONFIG, **cut)
    plan, held = _stages(config)
    check_resume(dataclasses.replace(config, resume=str(written.root)), plan)
    meta = run_meta(config, plan.program, plan.split)
    assert meta["sequences_per_step"] == 2 and (meta["dp"], meta["microbatches"], meta["microbatch_size"]) != (1, 2, 1)
    for named, optimizer in held:
        assert load_resumable(str(written.root), params=named, optimizer=optimizer, meta=meta) == 1
        for name, p in named.items():
            assert torch.equal(p, written.params[name]), name
            assert torch.equal(optimizer.state[p]["exp_avg_sq"], written.states[name]["exp_avg_sq"]), name


def test_another_global_batch_is_refused_naming_both_cuts(written):
    config = dataclasses.replace(CONFIG, dp=2, ranks=2)
    with pytest.raises(RunError, match=r"global batch of 2 sequences \(dp 1 x microbatches 2 x microbatch-size 1\); "
                                       r"this run has 4 sequences \(dp 2 x microbatches 2 x microbatch-size 1\)"):
        check_resume(dataclasses.replace(config, resume=str(written.root)), build_plan(config))
    # each rank checks again when it loads
    plan, [(named, optimizer), _] = _stages(config)
    with pytest.raises(RunError, match="this run has 4 sequences"):
        load_resumable(str(written.root), params=named, optimizer=optimizer,
                       meta=run_meta(config, plan.program, plan.split))


def test_a_moved_data_position_is_refused(written, tmp_path):
    """The record's data position must be step x global batch; a hand-edited one is named."""
    copy, step, _ = _damaged(written, tmp_path)
    record = json.loads((step / "meta.json").read_text())
    (step / "meta.json").write_text(json.dumps({**record, "data_position": 3}))
    with pytest.raises(RunError, match=f"checkpoint {step} is at data position 3, not step 1 x 2 sequences$"):
        check_resume(dataclasses.replace(CONFIG, resume=str(copy)), build_plan(CONFIG))

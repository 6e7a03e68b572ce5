"""PP x DP on 4 real gloo ranks equals its single-process twin.

One launch of 4 ranks trains every mesh shape in turn (PP2 x DP2, PP1 x DP4, PP4 x DP1) with
1f1b, zb_h1 and interleaved_1f1b, with and without ZeRO-1, then a PP2 x DP2 run that is
checkpointed and resumed (as it was, with the other --zero, under interleaved_1f1b V=2, and
as PP1 x DP4 with half the microbatches: the same global batch cut another way); last, the
4 ranks split into two worlds of 2 and ranks 0-1 resume the checkpoint as PP2 x DP1 with
twice the microbatches, or twice their size. The toy model (a tied embedding across the first and last stage, a skip value to a
non-adjacent stage) needs two stages at least, so the one-stage
PP1 x DP4 cases with 1f1b and zb_h1 train tiny-llama, split by the real frontend. Every
case's losses, grad norms and final weights must match `train_reference` on the same
global batch (D x M microbatches), and every replica must end with the same weights.
Two CLI runs check `ppc run --dp` against `ppc run --reference --dp` and that a failing
rank of one replica ends the whole run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, gloo_rank, init_gloo, ppc
from ppc.exec.config import RunConfig
from ppc.exec.data import PackedData
from ppc.exec.dp import GradReducer, buckets
from ppc.exec.mesh import build_mesh
from ppc.exec.plan import Plan, build_plan
from ppc.exec.reference import train_reference
from ppc.exec.train import train_pipeline
from toy_model import ToyLM, ToyStage, toy_loss, toy_split

from ppc.cli import main
from ppc.compiler import compile_program
from ppc.lang import load_schedule

WORLD = 4
TOY = RunConfig(model="toy", microbatches=4, microbatch_size=2, seq_len=16, steps=3, lr=1e-2, warmup=1,
                clip=0.5, seed=0)
LLAMA = dataclasses.replace(TOY, model="tiny-llama", microbatch_size=1, lr=1e-3)


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    pp: int
    dp: int
    schedule: str
    virtual: int = 1
    zero: int = 0

    @property
    def name(self) -> str:
        return f"{self.model}-pp{self.pp}xdp{self.dp}-{self.schedule}-v{self.virtual}-zero{self.zero}"

    def config(self) -> RunConfig:
        base = TOY if self.model == "toy" else LLAMA
        return dataclasses.replace(base, ranks=self.pp, dp=self.dp, schedule=self.schedule,
                                   virtual=self.virtual, zero=self.zero)


CASES = [
    *(Case("toy", 2, 2, s, v, z) for s, v in (("1f1b", 1), ("zb_h1", 1), ("interleaved_1f1b", 2))
      for z in (0, 1)),
    *(Case("toy", 4, 1, s, v) for s, v in (("1f1b", 1), ("zb_h1", 1), ("interleaved_1f1b", 2))),
    Case("toy", 1, 4, "interleaved_1f1b", 2, 0),
    Case("toy", 1, 4, "interleaved_1f1b", 2, 1),
    Case("tiny-llama", 1, 4, "1f1b", 1, 0),
    Case("tiny-llama", 1, 4, "zb_h1", 1, 1),
    Case("tiny-llama", 2, 2, "zb_h1", 1, 1),
]


def _plan(case: Case, config: RunConfig | None = None) -> Plan:
    config = config or case.config()
    if case.model != "toy":
        return build_plan(config)
    order = load_schedule(case.schedule).expand(ranks=case.pp, microbatches=config.microbatches,
                                                virtual=case.virtual)
    split = toy_split(order.stages, microbatch_size=config.microbatch_size, seq_len=config.seq_len)
    program = compile_program(order, split.graph, dp=case.dp)

    def materialize(stage: int, device: torch.device) -> torch.nn.Module:
        last = stage == order.stages - 1
        return ToyStage(ToyLM(config.seed), stage, split.stages[stage].blocks, last).to(device)

    return Plan(program=program, split=split, materialize=materialize, model="toy")


def _train(case: Case, config: RunConfig, mesh) -> dict:
    plan = _plan(case, config)
    result = train_pipeline(config, plan, device=torch.device("cpu"), mesh=mesh)
    weights = {
        plan.split.stages[s].param_names.get(n, n): p.detach().clone()
        for s, m in result.modules.items()
        for n, p in m.named_parameters()
    }
    reduces = [str(i) for i in plan.program.instructions[mesh.rank] if i.op.name == "REDUCE_GRAD"]
    return {"replica": mesh.replica, "history": [(r.step, r.loss, r.grad_norm) for r in result.history],
            "weights": weights, "reduces": reduces}


def _worker(rank: int, port: int, pair_ports: tuple[int, int], tmp: str) -> None:
    out = Path(tmp)
    with gloo_rank(rank, WORLD, port):
        for case in CASES:
            mesh = build_mesh(dp=case.dp, pp=case.pp, device_type="cpu")
            torch.save(_train(case, case.config(), mesh), out / f"{case.name}-{rank}.pt")
            dist.barrier()
        for zero in (0, 1):
            _resume_case(zero, rank, out)
        # a PP2 x DP1 mesh needs a world of 2 (process groups are created by the whole
        # world): ranks 0-1 and 2-3 become two worlds; the second waits
        dist.barrier()
        dist.destroy_process_group()
        init_gloo(rank % 2, 2, pair_ports[rank // 2])
        if rank < 2:
            _narrower_resume(rank, out)


def _resume_case(zero: int, rank: int, out: Path) -> None:
    """PP2 x DP2 zb_h1 for 4 steps with a checkpoint after 2, then a run resumed from it."""
    case = Case("toy", 2, 2, "zb_h1", 1, zero)
    mesh = build_mesh(dp=2, pp=2, device_type="cpu")
    ckpt = out / f"ckpt-zero{zero}"
    full = dataclasses.replace(case.config(), steps=4, checkpoint_every=2, checkpoint_dir=str(ckpt))
    first = _train(case, full, mesh)
    resumed = dataclasses.replace(full, checkpoint_every=0, resume=str(ckpt / "step-000002"))
    second = _train(case, resumed, mesh)
    # the other optimizer layout resumes from the same files
    other = dataclasses.replace(case, zero=1 - zero)
    third = _train(other, dataclasses.replace(resumed, zero=1 - zero), mesh)
    # another schedule and split (interleaved_1f1b: 4 stages of 2 blocks, V=2) too
    relaid = dataclasses.replace(case, schedule="interleaved_1f1b", virtual=2)
    fourth = _train(relaid, dataclasses.replace(resumed, schedule=relaid.schedule, virtual=2), mesh)
    # the same global batch of 16 sequences as 4 replicas x 2 microbatches (ZeRO-1: 4 shards)
    wide = Case("toy", 1, 4, "interleaved_1f1b", 2, zero)
    mesh4 = build_mesh(dp=4, pp=1, device_type="cpu")
    fifth = _train(wide, dataclasses.replace(resumed, ranks=1, dp=4, microbatches=2, schedule=wide.schedule,
                                             virtual=2), mesh4)
    torch.save({"full": first["history"], "resumed": second["history"], "switched": third["history"],
                "relaid": fourth["history"], "wider": fifth["history"], "final": first["weights"],
                "wider_final": fifth["weights"], "files": sorted(p.name for p in (ckpt / "step-000002").iterdir())},
               out / f"resume-zero{zero}-{rank}.pt")
    dist.barrier()


def _narrower_resume(rank: int, out: Path) -> None:
    """Ranks 0-1 of a world of 2: each checkpoint of `_resume_case` resumed as PP2 x DP1, with
    8 microbatches of 2 sequences, and (the plain one) 4 microbatches of 4: the global batch of
    16 sequences that PP2 x DP2 cut into 2 x 4 microbatches of 2."""
    case = Case("toy", 2, 1, "zb_h1")
    mesh = build_mesh(dp=1, pp=2, device_type="cpu")
    runs = {}
    for zero, microbatches, size in ((0, 8, 2), (1, 8, 2), (0, 4, 4)):
        config = dataclasses.replace(case.config(), steps=4, microbatches=microbatches, microbatch_size=size,
                                     resume=str(out / f"ckpt-zero{zero}" / "step-000002"))
        runs[zero, microbatches, size] = _train(case, config, mesh)
    torch.save(runs, out / f"narrower-{rank}.pt")


@pytest.fixture(scope="module")
def dp_runs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dp")
    ports = [free_port()]
    while len(ports) < 3:  # one for the world of 4, one for each world of 2 after it
        port = free_port()
        if port not in ports:
            ports.append(port)
    mp.spawn(_worker, args=(ports[0], (ports[1], ports[2]), str(tmp)), nprocs=WORLD, join=True)
    return tmp


_TWINS: dict[tuple[str, int], tuple[list, dict]] = {}


def _twin(model: str, dp: int) -> tuple[list, dict]:
    """(history, weights) of the single-process run on the same global batch."""
    if (model, dp) not in _TWINS:
        base = TOY if model == "toy" else LLAMA
        config = dataclasses.replace(base, dp=dp)
        if model == "toy":
            net, history = train_reference(config, device=torch.device("cpu"), model=ToyLM(config.seed),
                                           loss_fn=toy_loss)
        else:
            net, history = train_reference(config, device=torch.device("cpu"))
        weights = {n: p.detach().clone() for n, p in net.named_parameters()}
        _TWINS[model, dp] = ([(r.step, r.loss, r.grad_norm) for r in history], weights)
    return _TWINS[model, dp]


def _load(tmp: Path, case: Case) -> list[dict]:
    return [torch.load(tmp / f"{case.name}-{g}.pt", weights_only=False) for g in range(WORLD)]


@pytest.mark.slow  # 4 gloo ranks train 14 configurations, then 2 x 5 resume runs, then 2 ranks 3 more
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pp_x_dp_equals_single_process_twin(case, dp_runs):
    parts = _load(dp_runs, case)
    histories = [p["history"] for p in parts if p["history"]]
    assert len(histories) == case.dp, "the loss rank of every replica reports"
    assert all(h == histories[0] for h in histories), "every replica reports the global batch's loss"
    twin_history, twin_weights = _twin(case.model, case.dp)
    assert [s for s, _, _ in histories[0]] == [1, 2, 3]
    assert [loss for _, loss, _ in histories[0]] == pytest.approx([x for _, x, _ in twin_history], rel=1e-4)
    assert [norm for _, _, norm in histories[0]] == pytest.approx([x for _, _, x in twin_history], rel=1e-4)
    by_replica: dict[int, dict] = {}
    for part in parts:
        by_replica.setdefault(part["replica"], {}).update(part["weights"])
    assert sorted(by_replica) == list(range(case.dp))
    assert set(by_replica[0]) == set(twin_weights)
    for name, ref in twin_weights.items():
        torch.testing.assert_close(by_replica[0][name], ref, rtol=1e-4, atol=1e-6, msg=name)
    for replica, weights in by_replica.items():
        assert all(torch.equal(weights[n], by_replica[0][n]) for n in weights), f"replica {replica} drifted"
    # one REDUCE_GRAD per local stage when there are replicas, none without
    stages_per_rank = case.virtual
    assert all(len(p["reduces"]) == (stages_per_rank if case.dp > 1 else 0) for p in parts)


SHARDED = [c for c in CASES if c.zero and dataclasses.replace(c, zero=0) in CASES]


@pytest.mark.slow
@pytest.mark.parametrize("case", SHARDED, ids=[c.name for c in SHARDED])
def test_zero1_losses_equal_the_unsharded_run(case, dp_runs):
    plain = dataclasses.replace(case, zero=0)
    sharded = [p["history"] for p in _load(dp_runs, case) if p["history"]]
    unsharded = [p["history"] for p in _load(dp_runs, plain) if p["history"]]
    assert sharded[0] == unsharded[0]


@pytest.mark.slow
@pytest.mark.parametrize("zero", [0, 1])
def test_pp2_x_dp2_resume_reproduces_losses(zero, dp_runs):
    parts = [torch.load(dp_runs / f"resume-zero{zero}-{g}.pt", weights_only=False) for g in range(WORLD)]
    # pipeline rank 1 of each replica (global ranks 1 and 3) computes the loss
    for part in (parts[1], parts[3]):
        assert [s for s, _, _ in part["resumed"]] == [3, 4]
        assert part["resumed"] == part["full"][2:]
        assert part["switched"] == part["full"][2:], "resuming with the other --zero changes nothing"
        assert [s for s, _, _ in part["relaid"]] == [3, 4]
        assert [x for _, *x in part["relaid"]] == [pytest.approx(x, rel=1e-5) for _, *x in part["full"][2:]]
    # one safetensors file per pipeline rank, written by replica 0
    assert parts[0]["files"] == ["meta.json", "shard-00001-model-00001-of-00001.safetensors",
                                 "shard-00002-model-00001-of-00001.safetensors"]
    # PP1 x DP4 x 2 microbatches (with zero=1: AdamW state in 4 shards) continues the run
    full, final = parts[1]["full"][2:], {**parts[0]["final"], **parts[1]["final"]}
    for part in parts:
        assert [s for s, _, _ in part["wider"]] == [3, 4]
        _assert_same_run(part["wider"], full, part["wider_final"], final)


def _assert_same_run(history: list, full: list, weights: dict, final: dict) -> None:
    """Losses and grad norms of the resumed steps, and the final weights, equal the
    uninterrupted run's up to summation order."""
    assert [x for _, *x in history] == [pytest.approx(x, rel=1e-5) for _, *x in full]
    assert set(weights) == set(final)
    for name, ref in final.items():
        torch.testing.assert_close(weights[name], ref, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("run", [(0, 8, 2), (1, 8, 2), (0, 4, 4)], ids=["m8-b2", "m8-b2-from-zero1", "m4-b4"])
def test_pp2_x_dp1_resumes_pp2_x_dp2_at_the_same_global_batch(run, dp_runs):
    """Written by PP2 x DP2 x 4 microbatches of 2; resumed by one replica (ranks 0-1) with
    8 microbatches of 2 or 4 of 4: the same 16 sequences a step, the same run."""
    zero = run[0]
    written = [torch.load(dp_runs / f"resume-zero{zero}-{g}.pt", weights_only=False) for g in (0, 1)]
    parts = [torch.load(dp_runs / f"narrower-{g}.pt", weights_only=False)[run] for g in (0, 1)]
    assert parts[0]["history"] == [] and [s for s, _, _ in parts[1]["history"]] == [3, 4]
    assert parts[0]["reduces"] == parts[1]["reduces"] == [], "one replica: nothing to reduce"
    _assert_same_run(parts[1]["history"], written[1]["full"][2:], {**parts[0]["weights"], **parts[1]["weights"]},
                     {**written[0]["final"], **written[1]["final"]})


# ----- CLI ------------------------------------------------------------------------------

CLI = ["run", "--model", "tiny-llama", "--ranks", "2", "--dp", "2", "--microbatches", "2",
       "--seq-len", "16", "--steps", "2", "--lr", "1e-3", "--device", "cpu", "--quiet"]


@pytest.mark.slow
def test_cli_dp_equals_reference_dp(tmp_path):
    pipe = ppc(*CLI, "--schedule", "1f1b", "--zero", "1", "--metrics", str(tmp_path / "p.jsonl"),
               "--trace", str(tmp_path / "t.json"))
    assert pipe.returncode == 0, pipe.stderr[-2000:]
    ref = ppc(*CLI, "--schedule", "1f1b", "--reference", "--metrics", str(tmp_path / "r.jsonl"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    p = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    r = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [x["step"] for x in p] == [1, 2]
    assert [x["loss"] for x in p] == pytest.approx([x["loss"] for x in r], rel=1e-4)
    # tokens per step count the whole global batch: D x M x B x seq_len = 2 x 2 x 1 x 16
    assert [x["tokens_per_s"] * x["step_time_s"] for x in p] == pytest.approx([64, 64])
    # replica 0 writes the trace: one process per pipeline rank
    trace = json.loads((tmp_path / "t.json").read_text())
    assert {e["pid"] for e in trace["traceEvents"]} == {0, 1}


@pytest.mark.slow
def test_a_failing_rank_of_one_replica_ends_the_run(tmp_path):
    # global rank 3 = replica 1, pipeline rank 1: it dies where its gradients go to replica 0
    began = time.time()
    result = ppc(*CLI, "--schedule", "1f1b", "--steps", "3", "--timeout", "60",
                 env={"PPC_FAULT_AT": "3:2:1REDUCE_GRAD0", "PPC_STATUS_DIR": str(tmp_path)}, timeout=240)
    assert time.time() - began < 200
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "rank 3 failed at instruction 1REDUCE_GRAD0 (step 2)" in last


# ----- pieces, no ranks -----------------------------------------------------------------


def test_replicas_shard_the_global_batch_in_twin_order():
    data = PackedData(tokens=torch.arange(40 * 4), seq_len=4, seed=3)
    step = 2
    twin = data.microbatches(step, microbatches=6, microbatch_size=2)
    shards = [data.microbatches(step, microbatches=3, microbatch_size=2, replicas=2, replica=d) for d in (0, 1)]
    assert [torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(twin, shards[0] + shards[1])] == [True] * 6
    firsts = {int(row[0]) for shard in shards for mb in shard for row in mb["input_ids"]}
    assert len(firsts) == 12, "no sequence twice in a step"
    # one replica is the old layout
    assert torch.equal(data.microbatches(1, microbatches=3, microbatch_size=2)[0]["input_ids"],
                       data.microbatches(1, microbatches=3, microbatch_size=2, replicas=1, replica=0)[0]["input_ids"])


def test_buckets_cut_by_size_and_keep_order():
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 3, 10, 1)]
    for p in params:
        p.grad = torch.zeros_like(p)
    cut = buckets(params, cap=6 * 4)
    assert [[p.numel() for p in b] for b in cut] == [[3, 3], [10], [1]]


def test_a_weight_shared_by_two_local_stages_is_reduced_once_at_the_later_one():
    shared, a, b = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    reducer = GradReducer(params={0: [shared, a], 3: [b, shared]}, order=[3, 0], group=None, replicas=2)
    assert reducer.owned == {3: [b], 0: [shared, a]}
    reducer = GradReducer(params={0: [shared, a], 3: [b, shared]}, order=[], group=None, replicas=2)
    assert reducer.owned == {0: [a], 3: [b, shared]}


def test_cli_world_must_be_dp_times_ranks(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*CLI, "--nproc-per-node", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "world size 2 != dp 2 x schedule ranks 2" in err and "Traceback" not in err


def test_resume_with_another_dp_needs_the_same_global_batch():
    from ppc.exec.resume import mismatch

    meta = {"schedule": "1f1b", "ranks": 2, "stages": 2, "placement": [0, 1], "model": "toy"}
    saved = {**meta, "dp": 2, "microbatches": 4, "microbatch_size": 1, "sequences_per_step": 8, "step": 2,
             "data_position": 16}
    for dp, microbatches, size in ((1, 8, 1), (1, 4, 2), (4, 2, 1), (2, 4, 1)):
        cut = {"dp": dp, "microbatches": microbatches, "microbatch_size": size, "sequences_per_step": 8}
        assert mismatch(saved, {**meta, **cut}, where="checkpoint ck") is None, cut
    doubled = {"dp": 2, "microbatches": 8, "microbatch_size": 1, "sequences_per_step": 16}
    assert mismatch(saved, {**meta, **doubled}, where="checkpoint ck") == (
        "checkpoint ck was written with a global batch of 8 sequences (dp 2 x microbatches 4 x microbatch-size 1); "
        "this run has 16 sequences (dp 2 x microbatches 8 x microbatch-size 1): resume with the same product "
        "--dp x --microbatches x --microbatch-size (or start a new run)")
    # a checkpoint that does not record its global batch cannot be proven to match (exec/resume.py)
    older = {k: v for k, v in saved.items() if k != "sequences_per_step"}
    assert "does not record sequences_per_step" in mismatch(older, {**meta, **doubled}, where="checkpoint ck")

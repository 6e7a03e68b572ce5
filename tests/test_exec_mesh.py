"""Ranks through a mesh: the (dp, pp) rank arithmetic, and 4 real gloo ranks as 2 replicas
of a 2-rank pipeline that each train like the single-process reference."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, gloo_rank
from ppc.exec.config import RunConfig
from ppc.exec.mesh import MeshLayout, build_mesh
from ppc.exec.reference import train_reference
from ppc.exec.train import train_pipeline
from toy_model import ToyLM, toy_loss, toy_plan

from ppc.errors import RunError
from ppc.lang import load_schedule


@pytest.mark.parametrize(("dp", "pp"), [(1, 1), (1, 4), (2, 2), (3, 4), (4, 1)])
def test_layout_is_replica_major(dp, pp):
    layout = MeshLayout(dp=dp, pp=pp)
    assert layout.world == dp * pp
    ranks = [layout.global_rank(replica=d, rank=r) for d in range(dp) for r in range(pp)]
    assert ranks == list(range(dp * pp))
    assert [layout.coords(g) for g in ranks] == [(d, r) for d in range(dp) for r in range(pp)]
    assert [layout.pipeline(d) for d in range(dp)] == [list(range(d * pp, (d + 1) * pp)) for d in range(dp)]
    assert [layout.replicas(r) for r in range(pp)] == [list(range(r, dp * pp, pp)) for r in range(pp)]


def test_layout_rejects_ranks_outside_it():
    layout = MeshLayout(dp=2, pp=3)
    assert layout.pipeline(1) == [3, 4, 5] and layout.replicas(2) == [2, 5]
    with pytest.raises(ValueError, match="outside a 2 x 3 mesh"):
        layout.global_rank(replica=2, rank=0)
    with pytest.raises(ValueError, match="outside a world of 6"):
        layout.coords(6)
    with pytest.raises(ValueError, match="dp=0"):
        MeshLayout(dp=0, pp=2)


def test_config_dp_must_be_positive():
    assert RunConfig().dp == 1
    with pytest.raises(RunError, match="--dp must be at least 1, got 0"):
        RunConfig(dp=0)


DP, PP = 2, 2
CONFIG = RunConfig(
    model="toy", ranks=PP, dp=DP, microbatches=4, microbatch_size=2, seq_len=16, steps=3,
    lr=1e-2, warmup=1, clip=0.5, seed=0,
)


def _worker(rank: int, port: int, tmp: str) -> None:
    with gloo_rank(rank, DP * PP, port):
        mesh = build_mesh(dp=DP, pp=PP, device_type="cpu")
        order = load_schedule("1f1b").expand(ranks=PP, microbatches=CONFIG.microbatches)
        plan = toy_plan(order, seed=CONFIG.seed, microbatch_size=CONFIG.microbatch_size, seq_len=CONFIG.seq_len)
        config = dataclasses.replace(CONFIG, metrics=str(Path(tmp) / "metrics.jsonl"))
        result = train_pipeline(config, plan, device=torch.device("cpu"), mesh=mesh)
        record = {
            "mesh": mesh.device_mesh.mesh.tolist(),
            "coords": [mesh.replica, mesh.rank],
            "peers": [mesh.peer(r) for r in range(PP)],
            "group_sizes": [dist.get_world_size(mesh.pp_group), dist.get_world_size(mesh.dp_group)],
            "history": [(r.loss, r.grad_norm) for r in result.history],
        }
        (Path(tmp) / f"rank-{rank}.json").write_text(json.dumps(record))
        dist.barrier()


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("mesh")
    mp.spawn(_worker, args=(free_port(), str(tmp)), nprocs=DP * PP, join=True)
    return tmp


@pytest.mark.slow  # 4 gloo ranks train
def test_two_replicas_of_a_pipeline_each_equal_the_reference(mesh_run):
    records = [json.loads((mesh_run / f"rank-{g}.json").read_text()) for g in range(DP * PP)]
    assert all(r["mesh"] == [[0, 1], [2, 3]] for r in records)
    assert [r["coords"] for r in records] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert [r["peers"] for r in records] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert all(r["group_sizes"] == [PP, DP] for r in records)
    # the loss is on pipeline rank 1 of each replica: global ranks 1 and 3
    assert [bool(r["history"]) for r in records] == [False, True, False, True]
    first, second = records[1]["history"], records[3]["history"]
    assert first == second
    _, reference = train_reference(CONFIG, device=torch.device("cpu"), model=ToyLM(CONFIG.seed), loss_fn=toy_loss)
    assert [loss for loss, _ in first] == pytest.approx([r.loss for r in reference], rel=1e-4)
    # the global norm is summed over the pp group: a sum over the mesh would be sqrt(2) larger
    assert [norm for _, norm in first] == pytest.approx([r.grad_norm for r in reference], rel=1e-4)
    # replica 0 alone writes the metrics file
    lines = (mesh_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]

"""`ppc.Pipeline`: a plain MLP pipelined over 2 gloo ranks (and 2 x 2 with data
parallelism) inside the user's own loop trains exactly as the same loop in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port, gloo_rank
from torch import nn

STEPS, BATCH, MICROBATCHES = 4, 16, 4


class MLP(nn.Module):
    """Four blocks and a regression loss: the forward returns the loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)])
        self.head = nn.Linear(8, 1)

    def forward(self, x, y):
        return nn.functional.mse_loss(self.head(self.blocks(x)), y)


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 8, generator=gen), torch.randn(BATCH, 1, generator=gen)) for _ in range(STEPS)]


def _worker(rank: int, port: int, out: str, schedule: str, replicas: int) -> None:
    import ppc

    with gloo_rank(rank, 2 * replicas, port):
        rows = BATCH // replicas  # replica d trains on rows d*rows .. (d+1)*rows of each batch
        x0, y0 = _batches()[0]
        pipe = ppc.Pipeline(MLP(), {"x": x0[:rows // MICROBATCHES], "y": y0[:rows // MICROBATCHES]},
                            schedule=schedule, ranks=2, microbatches=MICROBATCHES,
                            optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
        replica = pipe.mesh.replica
        part = slice(replica * rows, (replica + 1) * rows)
        losses = [pipe.step({"x": x[part], "y": y[part]}) for x, y in _batches()]
        if pipe.computes_loss:
            with open(f"{out}.{replica}", "w") as f:
                json.dump(losses, f)


def _reference() -> list[float]:
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for x, y in _batches():
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "replicas"), [("1f1b", 1), ("zb_h1", 1), ("1f1b", 2)],
                         ids=["1f1b", "zb_h1", "1f1b-dp2"])
def test_pipeline_in_the_users_own_loop_equals_one_process(tmp_path, schedule, replicas) -> None:
    """With 2 replicas each trains on half of every batch; the mean of their losses and
    their averaged gradients are those of the whole batch in one process."""
    out = tmp_path / "losses.json"
    mp.spawn(_worker, args=(free_port(), str(out), schedule, replicas), nprocs=2 * replicas, join=True)
    per_replica = [json.loads(Path(f"{out}.{d}").read_text()) for d in range(replicas)]
    losses = [sum(step) / replicas for step in zip(*per_replica)]
    assert losses == pytest.approx(_reference(), rel=1e-5)


def test_importing_ppc_does_not_import_torch() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import ppc, sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"

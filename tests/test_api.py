"""`ppc.Pipeline`: a plain MLP pipelined over 2 gloo ranks inside the user's own loop
trains exactly as the same loop in one process."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port, init_gloo
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


def _worker(rank: int, port: int, out: str, schedule: str) -> None:
    import ppc

    init_gloo(rank, 2, port)
    try:
        x0, y0 = _batches()[0]
        pipe = ppc.Pipeline(MLP(), {"x": x0[:BATCH // MICROBATCHES], "y": y0[:BATCH // MICROBATCHES]},
                            schedule=schedule, microbatches=MICROBATCHES,
                            optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
        losses = [pipe.step({"x": x, "y": y}) for x, y in _batches()]
        if pipe.computes_loss:
            with open(out, "w") as f:
                json.dump(losses, f)
    finally:
        torch.distributed.destroy_process_group()


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
@pytest.mark.parametrize("schedule", ["1f1b", "zb_h1"])
def test_pipeline_in_the_users_own_loop_equals_one_process(tmp_path, schedule) -> None:
    out = tmp_path / "losses.json"
    mp.spawn(_worker, args=(free_port(), str(out), schedule), nprocs=2, join=True)
    assert json.loads(out.read_text()) == pytest.approx(_reference(), rel=1e-5)


def test_importing_ppc_does_not_import_torch() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import ppc, sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"

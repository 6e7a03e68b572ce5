"""The toy model of the executor tests (tests/toy_model.py), cut into stages, is the model."""

from __future__ import annotations

import torch
from toy_model import VOCAB, ToyLM, ToyStage, toy_loss, toy_split


def test_toy_stages_compose_to_the_full_model():
    split = toy_split(4, microbatch_size=2, seq_len=8)
    full = ToyLM(3)
    mods = [ToyStage(full, s, split.stages[s].blocks, s == 3) for s in range(4)]
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    h, emb = mods[0](ids)
    (h,) = mods[1](h)
    (h,) = mods[2](h)
    (loss,) = mods[3](h, emb, ids)
    assert torch.equal(loss, toy_loss(full, {"input_ids": ids, "labels": ids}))

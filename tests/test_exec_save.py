"""`--save DIR`: 4 real gloo ranks write one merged Hugging Face checkpoint that
AutoModelForCausalLM.from_pretrained loads, with the pipeline's final weights.

One launch trains tiny-llama (zb_h1) and tiny-llama-tied (zbv: the tied embedding and
LM head share one parameter on rank 0) for 2 steps each; the reference loop trained the
same way gives the expected weights and loss.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, gloo_rank
from ppc.exec.config import RunConfig
from ppc.exec.data import load_data, load_tokenizer
from ppc.exec.plan import build_plan
from ppc.exec.reference import hf_loss, train_reference
from ppc.exec.train import train_pipeline

pytestmark = pytest.mark.slow  # 4 gloo ranks train and save

WORLD = 4
BASE = RunConfig(
    ranks=WORLD, microbatches=4, microbatch_size=1, seq_len=16, steps=2, lr=1e-3, warmup=1, seed=0
)
CASES = {
    "tiny-llama": {"model": "tiny-llama", "schedule": "zb_h1"},
    "tiny-llama-tied": {"model": "tiny-llama-tied", "schedule": "zbv", "virtual": 2},
}


def _config(case: str, tmp: Path) -> RunConfig:
    return dataclasses.replace(BASE, save=str(tmp / case), **CASES[case])


def _worker(rank: int, port: int, tmp: str) -> None:
    with gloo_rank(rank, WORLD, port):
        for case in CASES:
            config = _config(case, Path(tmp))
            result = train_pipeline(config, build_plan(config), device=torch.device("cpu"))
            (Path(tmp) / f"{case}-allocated-{rank}").write_text(str(result.runtime.pool.allocated))
            dist.barrier()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("save")
    mp.spawn(_worker, args=(free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp


def _batch(config: RunConfig) -> dict[str, torch.Tensor]:
    """A batch the run never trained on (step `steps`), all microbatches stacked."""
    data = load_data(config.data, tokenizer=load_tokenizer(config.tokenizer), seq_len=config.seq_len,
                     seed=config.seed)
    micro = data.microbatches(config.steps, microbatches=config.microbatches,
                              microbatch_size=config.microbatch_size)
    return {k: torch.cat([m[k] for m in micro]) for k in micro[0]}


@pytest.mark.parametrize("case", list(CASES))
def test_saved_checkpoint_loads_with_the_pipeline_weights(case, saved):
    from transformers import AutoModelForCausalLM

    config = _config(case, saved)
    out = Path(config.save)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / ".ppc-parts").exists()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    reference, _ = train_reference(config, device=torch.device("cpu"))
    reference.eval()
    expected = dict(reference.named_parameters())
    got = dict(loaded.named_parameters())
    assert set(got) == set(expected)
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight.detach(), rtol=1e-4, atol=1e-6, msg=name)
    batch = _batch(config)
    with torch.no_grad():
        want, have = float(hf_loss(reference, batch)), float(hf_loss(loaded, batch))
    assert have == pytest.approx(want, rel=1e-4)
    # training moved the weights: the saved model is not the seed's initial one
    from ppc.frontend import build_model

    initial = dict(build_model(config.model, seed=config.seed).named_parameters())
    assert any(not torch.equal(got[n], initial[n].detach()) for n in got)


def test_tied_checkpoint_ties_embedding_and_head(saved):
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(_config("tiny-llama-tied", saved).save)
    assert loaded.config.tie_word_embeddings
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    untied = AutoModelForCausalLM.from_pretrained(_config("tiny-llama", saved).save)
    assert not torch.equal(untied.lm_head.weight, untied.model.embed_tokens.weight)


@pytest.mark.parametrize("case", list(CASES))
def test_receive_buffers_are_preallocated(case, saved):
    """Every receive of the run took a buffer allocated when the runtime was built."""
    assert [int((saved / f"{case}-allocated-{r}").read_text()) for r in range(WORLD)] == [0] * WORLD

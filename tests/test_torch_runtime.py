"""torch's pipeline runtime as a second back end: a ppc-compiled schedule (its compute-only
CSV) runs on `_PipelineScheduleRuntime` with ppc's split stages and trains what `ppc run
--reference` trains."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
from conftest import free_port, ppc

from ppc.frontend import build_split
from ppc.measure.torch_runtime import chain_stages


def test_chain_relays_what_later_stages_read():
    split_model = build_split("tiny-llama", stages=4, seq_len=16, microbatch_size=1)
    links = chain_stages(split_model)
    assert links[0][0] == ("input_ids", "labels")
    for (takes, _), stage in zip(links, split_model.stages):
        assert set(stage.inputs) <= set(takes)  # every stage reads what it needs from the link
    for (_, gives), (takes, _) in itertools.pairwise(links):
        assert gives == takes  # a chain: each stage reads what the previous returns
    assert links[-1][1] == (split_model.loss_name,)
    # the labels only the last stage reads travel along; nothing is relayed past its last reader
    assert all("labels" in gives for _, gives in links[:-1])
    assert "model_layers_1" in links[1][0] and "model_layers_1" not in links[2][0]


def _losses(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _torch_runtime_and_reference(tmp_path, schedule: str, ranks: int, flags: list[str]):
    """The metrics of `schedule` compiled for `ranks` on torch's runtime, and of `ppc run --reference`."""
    microbatches = flags[flags.index("-m") + 1]
    compiled = ppc("compile", schedule, "-r", str(ranks), "-m", microbatches, "--format", "csv")
    assert compiled.returncode == 0, compiled.stderr
    csv = tmp_path / f"{schedule}.csv"
    csv.write_text(compiled.stdout)
    ran = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
         str(free_port()), "-m", "ppc.measure.torch_runtime", "--csv", str(csv), *flags,
         "--metrics", str(tmp_path / "torch.jsonl")],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    reference = ppc("run", "--reference", *flags, "--metrics", str(tmp_path / "ref.jsonl"))
    assert reference.returncode == 0, reference.stderr
    return _losses(tmp_path / "torch.jsonl"), _losses(tmp_path / "ref.jsonl")


@pytest.mark.slow
def test_zb_h1_on_torch_runtime_equals_the_reference(tmp_path):
    got, want = _torch_runtime_and_reference(
        tmp_path, "zb_h1", 4, ["--model", "tiny-llama", "-m", "8", "--seq-len", "32", "--steps", "3"])
    assert [r["step"] for r in got] == [1, 2, 3]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in want], rel=1e-4)
    assert got[-1]["loss"] < got[0]["loss"]  # it trains


@pytest.mark.slow
def test_tied_embedding_on_torch_runtime_equals_the_reference(tmp_path):
    """The embedding on rank 0 and the head on rank 1 are one weight: its two gradients are
    summed across the ranks before the step, as in `ppc run`."""
    got, want = _torch_runtime_and_reference(
        tmp_path, "1f1b", 2, ["--model", "tiny-llama-tied", "-m", "4", "--seq-len", "16", "--steps", "3"])
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in want], rel=1e-4)

"""`ppc run` launched by torchrun: every flag passes through (torchrun refuses `--virtual`,
a prefix of its own `--virtual-local-rank`, so ppc spells it `-V`/`--virtual-stages`), on
one node and on two local "nodes" joined by a c10d rendezvous."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

RUN = ["-m", "ppc", "run", "--model", "tiny-llama", "--schedule", "zbv", "-r", "4", "--virtual-stages", "2",
       "-m", "4", "--microbatch-size", "1", "--seq-len", "16", "--steps", "2", "--device", "cpu", "--quiet"]


def _torchrun(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_single_node_and_two_local_nodes_equal_the_reference(tmp_path: Path) -> None:
    single = _torchrun("--nproc-per-node", "4", "--master-port", str(free_port()), *RUN,
                       "--metrics", str(tmp_path / "one.jsonl"))
    _, err = single.communicate(timeout=600)
    assert single.returncode == 0, err[-3000:]
    port = free_port()
    nodes = [_torchrun("--nnodes", "2", "--nproc-per-node", "2", "--node-rank", str(node), "--rdzv-backend",
                       "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "ppc-test", *RUN,
                       "--metrics", str(tmp_path / "two.jsonl"))
             for node in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    reference = subprocess.run([sys.executable, *RUN, "--reference", "--metrics", str(tmp_path / "ref.jsonl")],
                               capture_output=True, text=True, timeout=600, check=False)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert _losses(tmp_path / "one.jsonl") == pytest.approx(_losses(tmp_path / "ref.jsonl"), rel=1e-4)
    assert _losses(tmp_path / "two.jsonl") == pytest.approx(_losses(tmp_path / "ref.jsonl"), rel=1e-4)


def test_every_run_flag_gets_past_torchruns_parser() -> None:
    """torchrun's own parser classifies every argument after the script; a ppc flag that is a
    prefix of two torchrun options is refused before ppc starts (the --virtual bug)."""
    from torch.distributed.run import get_args_parser

    from ppc.cli import build_parser

    torchrun = get_args_parser()
    run = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices["run"]
    flags = [a.option_strings[0] if a.option_strings[0].startswith("--") or len(a.option_strings) == 1
             else a.option_strings[1] for a in run._actions if a.option_strings and a.dest != "help"]
    flags += ["-V", "-r", "-m", "--virtual-stages"]
    for flag in flags:
        args = torchrun.parse_args(["--nproc-per-node", "1", "-m", "ppc", "run", flag, "1"])
        assert args.training_script == "ppc" and args.training_script_args == ["run", flag, "1"], flag

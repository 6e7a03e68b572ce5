"""Helpers shared by the test modules: the CLI in a subprocess, a free port, a gloo rank,
a built-in schedule's compute orders as strings.

Tests that launch ranks, train, run torchrun or a profile run are marked `slow`;
`scripts/test.sh --quick` runs the others (`pytest -m "not slow"`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_token_cache(tmp_path_factory):
    """Tokenized data is cached in $PPC_CACHE (exec/token_cache.py): the suite and the ranks
    it starts use a cache of their own, never the user's ~/.cache/ppc."""
    os.environ["PPC_CACHE"] = str(tmp_path_factory.mktemp("ppc-cache"))


@pytest.fixture
def no_launch(monkeypatch):
    """`ppc run` in this process may check its inputs but never start workers."""
    from ppc.exec import launch

    def launched(*args, **kwargs):
        raise AssertionError("the preflight passed and workers were started")

    monkeypatch.setattr(launch, "self_launch", launched)


def refused(args: list[str], capsys) -> str:
    """Run the CLI in this process on `args`, which it must refuse: exit 2 and one line."""
    from ppc.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def load_script(name: str):
    """scripts/NAME.py as a module (the scripts are files, not a package)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ppc_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def ppc(*args: str, cwd: str | Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m ppc ARGS` (the real entry point) and return it finished, output captured
    as text; `env` adds to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "ppc", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=timeout, check=False,
    )


def ppc_orders(name: str, ranks: int, microbatches: int, virtual: int = 1) -> list[list[str]]:
    """Schedule `name` expanded: per rank, its compute actions in torch's spelling (`2F0`,
    `(0F1;3B0)OVERLAP_F_B`), the form the orders of torch and DeepSpeed are compared in."""
    from ppc.lang import load_schedule

    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    return [[str(a) for a in row] for row in order.compute]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gloo_rank(rank: int, world: int, port: int) -> Iterator[None]:
    """One gloo rank of an mp.spawn worker: joins the group; once the body is done, every
    rank meets at a barrier, destroys the group and leaves the way `ppc run`'s workers do
    (exec/signals.exit_worker), without interpreter finalization, where torch's gloo
    teardown now and then aborts a rank that did all its work (SIGABRT). A body that
    raises leaves normally, so that mp.spawn reports the error."""
    import torch.distributed as dist
    from ppc.exec.signals import exit_worker

    init_gloo(rank, world, port)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.barrier()
    dist.destroy_process_group()
    exit_worker(0)


def init_gloo(rank: int, world: int, port: int) -> None:
    """Join a gloo process group of `world` local ranks (inside an mp.spawn worker)."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)

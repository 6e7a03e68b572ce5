"""Process launch and fault reporting.

Outside torchrun, `ppc run --nproc-per-node N` starts N workers through
torch.distributed's elastic launcher (as `torchrun --standalone` would): on CPU forked
from the launcher, which has already imported and traced the model (each under a keeper
that records how it ended), on GPU as fresh interpreters. When a worker fails, the agent
stops the others, so no rank hangs on a dead peer. Each worker keeps a small status file
(pid, step, current instruction) so that even a rank killed by a signal can be reported
with the instruction it was on.
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["StatusBoard", "describe_failure", "self_launch", "under_torchrun"]

STATUS_ENV = "PPC_STATUS_DIR"
_SLOT = 160


def under_torchrun() -> bool:
    """Whether this process is a worker started by torchrun (or the self-launcher)."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


class StatusBoard:
    """This worker's status slot: `pid step instruction`, rewritten at every instruction."""

    def __init__(self, directory: str | None, rank: int):
        self.rank = rank
        self.step, self.instruction = -1, "start-up"
        self._map = None
        if directory:
            path = Path(directory) / f"rank-{rank}.status"
            path.write_bytes(b" " * _SLOT)
            self._file = path.open("r+b")
            self._map = mmap.mmap(self._file.fileno(), _SLOT)
            self._write()

    def update(self, step: int, instruction) -> None:
        self.step, self.instruction = step, str(instruction)
        if self._map is not None:
            self._write()

    def _write(self) -> None:
        text = f"{os.getpid()} {self.step} {self.instruction}".encode()[: _SLOT - 1]
        self._map[:_SLOT] = text.ljust(_SLOT)

    def where(self) -> str:
        if self.step < 0:
            return f"during {self.instruction}"
        return f"at instruction {self.instruction} (step {self.step + 1})"

    def fail(self, message: str) -> None:
        if self._map is not None:
            path = Path(self._file.name).with_suffix(".error")
            path.write_text(f"{time.time()}\n{message}\n")


def read_status(directory: Path, rank: int) -> tuple[int, int, str] | None:
    """(pid, step, instruction) from a worker's status file, or None."""
    try:
        fields = (directory / f"rank-{rank}.status").read_text().split()
    except OSError:
        return None
    if len(fields) < 3:
        return None
    return int(fields[0]), int(fields[1]), " ".join(fields[2:])


def _error_of(directory: Path, rank: int) -> tuple[float, str] | None:
    try:
        stamp, message = (directory / f"rank-{rank}.error").read_text().split("\n", 1)
        return float(stamp), message.strip()
    except (OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    rank: int
    exitcode: int


def describe_failure(directory: Path, failures: list[Failure], watch=None) -> str:
    """One line naming the rank that failed first and the instruction it was on.

    A rank that raised (not over a lost peer or a timeout) is the cause; then a rank the
    watch (exec/watch.py) saw stopped; then one killed by a signal other than the
    launcher's SIGTERM; then, when ranks timed out, the silent rank whose status changed
    least recently (the one they waited for); ranks that lost a peer come after.
    """
    stopped = watch.stopped if watch is not None else {}
    changed = watch.last_change if watch is not None else {}
    timed_out = any(e and _is_timeout(e[1]) for e in (_error_of(directory, f.rank) for f in failures))

    def rank_key(failure: Failure):
        error = _error_of(directory, failure.rank)
        if error is not None and not _is_peer_loss(error[1]) and not _is_timeout(error[1]):
            return (0, error[0])
        if failure.rank in stopped:
            return (1, 0.0)
        if failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM:
            return (2, 0.0)
        if error is None and timed_out and failure.rank in changed:
            return (3, changed[failure.rank])
        if error is not None:
            return (4, error[0])
        return (5, 0.0) if failure.exitcode else (6, 0.0)  # 0: stopped by the agent, no word

    cause = min(failures, key=rank_key)
    if cause.rank in stopped:
        step, instruction = stopped[cause.rank]
        return f"rank {cause.rank} was stopped (SIGSTOP){_where(step, instruction)}; the other ranks waited for it"
    error = _error_of(directory, cause.rank)
    if error is None and timed_out and cause.rank in changed:
        status = read_status(directory, cause.rank)
        where = _where(status[1], status[2]) if status else ""
        idle = time.time() - changed[cause.rank]
        return (f"rank {cause.rank} hung{where}: no progress for {idle:.0f} s while the other ranks "
                f"timed out waiting")
    if error is not None:
        return error[1]
    status = read_status(directory, cause.rank)
    where = ""
    if status is not None:
        _, step, instruction = status
        where = f" during {instruction}" if step < 0 else f" at instruction {instruction} (step {step + 1})"
    if cause.exitcode < 0:
        try:
            name = signal.Signals(-cause.exitcode).name
        except ValueError:
            name = f"signal {-cause.exitcode}"
        return f"rank {cause.rank} was killed by {name}{where}"
    return f"rank {cause.rank} exited with code {cause.exitcode}{where}"


def _where(step: int, instruction: str) -> str:
    return f" during {instruction}" if step < 0 else f" at instruction {instruction} (step {step + 1})"


def _is_timeout(message: str) -> bool:
    lowered = message.lower()
    return "timed out" in lowered or "timeout" in lowered


def _is_peer_loss(message: str) -> bool:
    lowered = message.lower()
    return any(s in lowered for s in ("connection closed", "connection reset", "broken pipe", "peer"))


def _quiet_elastic_loggers() -> None:
    """The agent's own warnings and errors ("Received 2 death signal", "failed (exitcode: 1)")
    repeat what ppc reports in one line. Its modules set each logger's level themselves, so
    every one of them is raised, not just the parent."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.multiprocessing")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _cheap_rendezvous_event_names() -> None:
    """torch's dynamic rendezvous names each of its events with `inspect.stack()`, which
    reads the source of every frame and scans sys.modules for each: once the launcher has
    imported a Hugging Face model to check it, that is about 2 s of CPU per run (measured
    with cProfile on this 2-core machine). The names only label torch's own debug events;
    the calling function's name from the frame is the same name, for free."""
    try:
        from torch.distributed.elastic.rendezvous import dynamic_rendezvous
    except ImportError:
        return
    if hasattr(dynamic_rendezvous, "get_method_name"):
        dynamic_rendezvous.get_method_name = _caller_name


def _caller_name(depth: int = 2) -> str:
    """The name of the function `depth` frames up from the caller (inspect.stack()[depth])."""
    try:
        return sys._getframe(depth).f_code.co_name
    except ValueError:  # the stack is shallower
        return "no_method_name"


def _keep(work: Callable[[list[str]], int], argv: list[str]) -> int:
    """A forked worker's keeper: runs `work(argv)` in a child and writes how it ended
    (exit code, or minus the signal that killed it) to the status board's rank-R.exit.

    torch's multiprocessing context reports only the first process that ended, and reaps
    the rest unseen; the keeper lets the launcher name a rank killed by a signal while its
    neighbours fail over the lost connection. The keeper dies with SIGTERM (the agent's
    stop), and its worker with it (the worker's parent-death signal)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from ppc.exec.signals import LAUNCHER_ENV, die_with_parent

    die_with_parent()
    if os.getppid() != int(os.environ[LAUNCHER_ENV]):  # the launcher died before that was armed
        os._exit(1)
    os.environ[LAUNCHER_ENV] = str(os.getpid())  # the worker's parent is this keeper
    child = os.fork()
    if child == 0:
        code = 1
        try:
            code = work(argv)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    exit_file = Path(os.environ[STATUS_ENV]) / f"rank-{os.environ['RANK']}.exit"
    exit_file.write_text(f"{code}\n")
    if code:
        os._exit(code if code > 0 else 1)
    return 0


def _failures(directory: Path, reported: dict[int, int], ranks: int) -> list[Failure]:
    """Every rank with its exit code: from its keeper's rank-R.exit where there is one (a
    forked run), else as the agent reported it; 0 for a rank the agent stopped (or that
    was itself stopped, which the watch knows)."""
    failures = []
    for rank in range(ranks):
        try:
            code = int((directory / f"rank-{rank}.exit").read_text())
        except (OSError, ValueError):
            code = reported.get(rank, 0)
        failures.append(Failure(rank=rank, exitcode=code))
    return failures


def self_launch(
    argv: list[str], *, nproc: int, monitor_interval: float = 0.2, fork: Callable[[list[str]], int] | None = None
) -> tuple[int, str]:
    """Run `python -m ppc <argv>` on `nproc` local workers; (exit code, failure line or "").

    With `fork`, each worker is forked from this process and runs `fork(argv)` instead: it
    starts with everything the launcher has imported and built (torch, the model's code,
    the traced plan), which a fresh interpreter spends seconds of CPU on per rank. Only for
    CPU runs: a process that forks must not have touched CUDA, and NCCL runs keep spawning.
    Each forked worker has a keeper (`_keep`) that records how it ended."""
    from ppc.exec.signals import LAUNCHER_ENV
    from ppc.exec.watch import WorkerWatch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    own_dir = not os.environ.get(STATUS_ENV)
    status_dir = os.environ.get(STATUS_ENV) or tempfile.mkdtemp(prefix="ppc-status-")
    os.environ[STATUS_ENV] = status_dir
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=monitor_interval,
        start_method="fork" if fork is not None else "spawn",
    )
    _quiet_elastic_loggers()
    _cheap_rendezvous_event_names()
    try:
        with WorkerWatch(Path(status_dir), nproc) as watch:
            if fork is not None:
                elastic_launch(config, _keep)(fork, argv)
            else:
                elastic_launch(config, sys.executable)("-u", "-m", "ppc", *argv)
    except SignalException:  # SIGINT/SIGTERM/SIGHUP to the launcher: the agent stopped the workers
        raise KeyboardInterrupt from None
    except ChildFailedError as error:
        failures = _failures(Path(status_dir), {r: f.exitcode for r, f in error.failures.items()}, nproc)
        codes = {f.exitcode for f in failures if f.exitcode}
        code = 2 if codes == {2} else 1
        return code, describe_failure(Path(status_dir), failures, watch)
    finally:
        if own_dir:
            shutil.rmtree(status_dir, ignore_errors=True)
            del os.environ[STATUS_ENV]
    return 0, ""

"""The launcher's view of its workers while they run: when each rank's status last changed,
and which ranks the kernel reports as stopped (SIGSTOP, SIGTSTP).

A stopped rank never raises: its neighbours time out waiting for it and would be blamed
for the failure. `WorkerWatch` polls the status board (exec/launch.py) from a daemon
thread, so that the failure can name the rank that stopped, and ends a stopped worker
with SIGKILL once another rank has failed (a stopped process ignores the agent's
SIGTERM, which would hold the launcher for its 30 s shutdown grace). Linux /proc only;
elsewhere only the status times are known. No torch here.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger(__name__)

__all__ = ["WorkerWatch"]

POLL_S = 0.5


class WorkerWatch:
    """Polls `directory`'s rank-R.status files of `ranks` workers every POLL_S seconds."""

    def __init__(self, directory: Path, ranks: int, *, interval: float = POLL_S):
        self.directory, self.ranks, self.interval = Path(directory), ranks, interval
        self.last_change: dict[int, float] = {}
        """Rank -> time.time() when its status (step, instruction) was last seen to change."""
        self.stopped: dict[int, tuple[int, str]] = {}
        """Rank -> (step, instruction) when it was first seen stopped."""
        self._seen: dict[int, tuple] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ppc-worker-watch", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.poll()
            except Exception:
                log.debug("worker watch poll failed", exc_info=True)

    def poll(self) -> None:
        """One look at every rank (also called by tests)."""
        from ppc.exec.launch import read_status

        now = time.time()
        failing = any(self.directory.glob("rank-*.error"))
        for rank in range(self.ranks):
            try:
                status = read_status(self.directory, rank)
            except ValueError:  # a slot read while it was being rewritten
                continue
            if status is None:
                continue
            pid, step, instruction = status
            if self._seen.get(rank) != (step, instruction):
                self._seen[rank] = (step, instruction)
                self.last_change[rank] = now
            if not _is_stopped_child(pid):
                continue
            self.stopped.setdefault(rank, (step, instruction))
            if failing:
                log.info("rank %s is stopped and the run is failing: SIGKILL to pid %s", rank, pid)
                os.kill(pid, signal.SIGKILL)


def _is_stopped_child(pid: int) -> bool:
    """Whether `pid` is this process's child or grandchild (a forked worker under its
    keeper, exec/launch.py) and stopped (state T or t in /proc)."""
    state, parent = _state_and_parent(pid)
    if state not in ("T", "t"):
        return False
    return parent == os.getpid() or _state_and_parent(parent)[1] == os.getpid()


def _state_and_parent(pid: int) -> tuple[str, int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", -1
    # pid (comm) state ppid ...; comm may hold spaces and parentheses
    fields = stat[stat.rfind(")") + 2:].split()
    return (fields[0], int(fields[1])) if len(fields) >= 2 else ("", -1)

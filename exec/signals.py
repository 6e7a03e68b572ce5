"""Signals: how `ppc run` and its workers end.

The launcher turns SIGTERM into KeyboardInterrupt (while it checks its input; during the
run torch's elastic agent raises its own SignalException, which exec/launch.py turns into
KeyboardInterrupt too), so the CLI prints `ppc: interrupted` and exits 130. A worker dies
at once and quietly on SIGINT and SIGTERM (the agent sends them when the run ends early:
no KeyboardInterrupt unwinding through a blocked collective), and dies with its launcher:
the kernel sends it SIGKILL when the launcher exits (prctl PR_SET_PDEATHSIG on Linux; a
watchdog thread polling the parent pid elsewhere). No torch here.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

__all__ = ["LAUNCHER_ENV", "die_with_parent", "exit_worker", "guard_worker", "interrupt_on_sigterm"]

LAUNCHER_ENV = "PPC_LAUNCHER_PID"
"""Set by the self-launcher to its pid: a worker whose parent is already gone exits."""

_PR_SET_PDEATHSIG = 1
WATCHDOG_INTERVAL_S = 0.5


def interrupt_on_sigterm() -> None:
    """In the launcher (main thread): SIGTERM raises KeyboardInterrupt, as Ctrl-C does."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def guard_worker() -> None:
    """In a worker: default (silent, immediate) SIGINT/SIGTERM, and die with the parent."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    launcher = os.environ.get(LAUNCHER_ENV)
    # the launcher may have died before the death signal was armed
    if launcher is not None and launcher.isdigit() and os.getppid() != int(launcher):
        log.warning("launcher %s is gone; exiting", launcher)
        os._exit(1)


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (a watchdog thread where Linux's
    parent-death signal is not available)."""
    parent = os.getppid()
    if not _parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), name="ppc-parent-watch", daemon=True).start()


def _parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_INTERVAL_S)
    os._exit(1)


def exit_worker(code: int) -> None:
    """End a worker whose run is finished and whose process group is destroyed, without
    interpreter finalization: static C++ objects torch's gloo backend leaves behind can
    hold joinable threads, and destroying them at exit aborts a rank that trained well
    ("terminate called without an active exception", SIGABRT). Everything the run wrote
    is flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)

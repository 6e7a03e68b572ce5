"""The CPU host that ranks of a CPU run share: how many cores, how many threads each.

Every rank of a CPU run is a process on one machine. Left alone, each process starts as
many intra-op threads as there are cores, so R ranks oversubscribe the cores R times over.
`ppc run` and `ppc profile --ranks` both use `threads_per_rank`, so what the profile
measured is what the run does, and the costs file records the host for the simulator.
"""

from __future__ import annotations

import os

__all__ = ["host_cores", "threads_per_rank"]


def host_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_rank(ranks: int) -> int:
    """OMP_NUM_THREADS when set; else the cores split evenly between `ranks` (at least 1)."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, host_cores() // max(1, ranks))

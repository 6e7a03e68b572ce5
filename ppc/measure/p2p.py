"""`ppc profile --p2p`: point-to-point and all-reduce latency and bandwidth between two
processes.

Two processes join a process group of their own (gloo on the CPU; NCCL with one GPU
each when the device is cuda and two GPUs exist). Latency is the median round trip of a
small message, halved; bandwidth is a large message's bytes over its median one-way time
(a round trip of the large message out and a small acknowledgement back, less the
latency of that acknowledgement). The post cost is the median time rank 0 spends in the
executor's Transport.post for one send and one receive, the rank time every group of
transfers costs `ppc run`. All three go into the costs JSON's "comm" (ppc/costs.py).

The same two processes then time all-reduces (the collective that reduces gradients
across pipeline replicas) of the small and the large message, and fit the ring model
the simulator uses, t(n) = 2 (D-1) latency + 2 (D-1)/D n / bandwidth with D = 2, to the
two medians: they go into the costs' "collective".
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import statistics
import time
from dataclasses import dataclass

from ppc.errors import CostError

log = logging.getLogger(__name__)

__all__ = ["P2PResult", "measure_p2p"]


@dataclass(frozen=True, slots=True, kw_only=True)
class P2PResult:
    latency: float
    """Seconds per message (half the median small round trip)."""
    bandwidth: float
    """Bytes per second of a large message."""
    backend: str
    large_bytes: int
    post: float = 0.0
    """Seconds a rank spends posting one batch of a send and a receive."""
    collective_latency: float | None = None
    """Ring all-reduce latency per hop (seconds), fitted to 2 ranks' all-reduces."""
    collective_bandwidth: float | None = None
    """Ring all-reduce bandwidth per link (bytes per second)."""

    def describe(self) -> str:
        text = (f"{self.backend}: latency {self.latency * 1e6:.1f} us, bandwidth "
                f"{self.bandwidth / 1e9:.3f} GB/s ({self.large_bytes / 2**20:.0f} MiB messages), "
                f"posting a send + receive {self.post * 1e6:.1f} us")
        if self.collective_latency is not None:
            text += (f"; all-reduce (ring fit): latency {self.collective_latency * 1e6:.1f} us, "
                     f"bandwidth {self.collective_bandwidth / 1e9:.3f} GB/s")
        return text


def measure_p2p(device: str = "cpu", *, large_bytes: int = 16 * 2**20, repeats: int = 10,
                warmup: int = 3, timeout: float = 120.0) -> P2PResult:
    """Spawn two ranks and measure; raises CostError when they cannot be started."""
    import torch
    import torch.multiprocessing as mp

    if repeats < 1 or warmup < 0 or large_bytes < 1024:
        raise CostError(f"p2p needs repeats >= 1, warmup >= 0, large_bytes >= 1024; got {repeats}, "
                        f"{warmup}, {large_bytes}")
    cuda = device.startswith("cuda")
    if cuda and torch.cuda.device_count() < 2:
        raise CostError(f"--p2p on cuda needs two GPUs, torch sees {torch.cuda.device_count()}")
    backend = "nccl" if cuda else "gloo"
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = _free_port()
    settings = (backend, port, large_bytes, repeats, warmup, timeout)
    procs = [context.Process(target=_rank_main, args=(rank, settings, queue), daemon=True) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout + 30)
    if any(proc.is_alive() for proc in procs):
        for proc in procs:
            proc.kill()
        raise CostError(f"p2p measurement ({backend}) did not finish in {timeout + 30:.0f} s")
    if any(proc.exitcode for proc in procs) or queue.empty():
        codes = [proc.exitcode for proc in procs]
        raise CostError(f"p2p measurement ({backend}) failed: process exit codes {codes}")
    kind, payload = queue.get()
    if kind == "error":
        raise CostError(f"p2p measurement ({backend}) failed: {payload}")
    small_rtts, large_rtts, posts, small_reduces, large_reduces = payload
    latency = statistics.median(small_rtts) / 2
    one_way = max(statistics.median(large_rtts) - latency, 1e-9)
    ring_latency, ring_bandwidth = fit_ring(statistics.median(small_reduces), statistics.median(large_reduces),
                                            small_bytes=_SMALL_BYTES, large_bytes=large_bytes, replicas=2)
    result = P2PResult(latency=latency, bandwidth=large_bytes / one_way, backend=backend, large_bytes=large_bytes,
                       post=statistics.median(posts), collective_latency=ring_latency,
                       collective_bandwidth=ring_bandwidth)
    log.info("p2p %s", result.describe())
    return result


_SMALL_BYTES = 8
"""The small message: two float32."""


def fit_ring(small_seconds: float, large_seconds: float, *, small_bytes: int, large_bytes: int,
             replicas: int) -> tuple[float, float]:
    """(latency, bandwidth) of the ring model t(n) = 2 (D-1) latency + 2 (D-1)/D n /
    bandwidth through two measured all-reduces of `small_bytes` and `large_bytes`."""
    hops = 2 * (replicas - 1)
    per_byte = max(large_seconds - small_seconds, 1e-9) / (large_bytes - small_bytes)
    bandwidth = hops / replicas / per_byte
    latency = max(small_seconds - hops / replicas * small_bytes / bandwidth, 0.0) / hops
    return latency, bandwidth


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, settings: tuple, queue) -> None:
    """One of the two ranks; rank 0 times round trips and puts them on `queue`."""
    import torch
    import torch.distributed as dist

    backend, port, large_bytes, repeats, warmup, timeout = settings
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=timeout))
        check = torch.ones(1, device=device)
        dist.all_reduce(check)  # both up; NCCL's first point-to-point needs a prior collective
        small = torch.zeros(2, dtype=torch.float32, device=device)
        large = torch.zeros(large_bytes // 4, dtype=torch.float32, device=device)
        small_rtts = _round_trips(rank, small, small, warmup, repeats * 5, device)
        large_rtts = _round_trips(rank, large, small, warmup, repeats, device)
        posts = _post_times(rank, small, warmup, repeats * 5, device)
        small_reduces = _all_reduce_times(small, warmup, repeats * 5, device)
        large_reduces = _all_reduce_times(large, warmup, repeats, device)
        if rank == 0:
            queue.put(("ok", (small_rtts, large_rtts, posts, small_reduces, large_reduces)))
        dist.barrier()
        dist.destroy_process_group()
    except Exception as error:  # reported to the parent as one line
        if rank == 0:
            queue.put(("error", f"{type(error).__name__}: {error}"))
        raise


def _round_trips(rank: int, out, back, warmup: int, repeats: int, device) -> list[float]:
    """Rank 0 sends `out` to rank 1, which answers with `back`; rank 0's round-trip times."""
    import torch
    import torch.distributed as dist

    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        if rank == 0:
            dist.send(out, 1)
            dist.recv(back, 1)
        else:
            dist.recv(out, 0)
            dist.send(back, 0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - began)
    return times


def _all_reduce_times(tensor, warmup: int, repeats: int, device) -> list[float]:
    """Seconds of each all-reduce of `tensor` across both ranks, each started together
    (after a barrier)."""
    import torch
    import torch.distributed as dist

    times = []
    for i in range(warmup + repeats):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        dist.all_reduce(tensor)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - began)
        tensor.zero_()  # keep the values finite however many times they are summed
    return times


def _post_times(rank: int, tensor, warmup: int, repeats: int, device) -> list[float]:
    """Seconds each rank spends in Transport.post for one send and one receive to its peer."""
    import torch.distributed as dist

    from ppc.exec.p2p import BufferPool, Transport

    transport = Transport(device=device, pool=BufferPool(device))
    peer = 1 - rank
    inbox = tensor.clone()
    times = []
    for i in range(warmup + repeats):
        dist.barrier()
        began = time.perf_counter()
        pending = transport.post([(peer, [tensor])], [(peer, [inbox])])
        took = time.perf_counter() - began
        pending.wait()
        if i >= warmup:
            times.append(took)
    return times

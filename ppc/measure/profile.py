"""`ppc profile`: measure a model's per-stage costs on the real device.

For each stage of the split, with real weights on the device: F, B, I and W times
(warm-up runs, then the median of repeats; CUDA events on a GPU, a monotonic clock on
the CPU), the activation bytes one microbatch keeps alive for backward (what autograd
saves, parameters excluded), and the bytes each stage sends downstream. Backward runs
through the executor's own B/I/W functions (ppc.exec.autograd_split), so the times are
those of the ops `ppc run` executes. Stages are measured one after another on one
device: stage s runs on the real outputs of stage s - 1.

The result is a CostProfile (seconds); its JSON is what `ppc simulate --costs` reads.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from ppc.errors import CostError
from ppc.plan.cost_profile import CostProfile

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileRequest:
    model: str
    """Preset name or local HF directory."""
    stages: int | None
    """Stages to split into (None: one stage per repeated block, the finest split)."""
    seq_len: int = 128
    microbatch_size: int = 1
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 5
    by: str = "cost"
    seed: int = 0
    layers: bool = True
    """Also measure the finest split, recorded as per-layer costs for `ppc plan`."""
    dtype: str | None = None
    """"bf16" runs forwards under bf16 autocast (as `ppc run` does on GPU); default: bf16 on cuda."""
    ranks: int | None = None
    """CPU only: take op costs from a calibration run on `ranks` ranks of this host
    (ppc/measure/host_calibration.py)."""
    p2p_bytes: int | None = None
    """Also measure point-to-point latency and bandwidth (with messages of this size)."""

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise CostError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.dtype not in (None, "fp32", "bf16"):
            raise CostError(f"--dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.ranks is not None and (self.ranks < 1 or self.device != "cpu"):
            raise CostError(f"--ranks needs --device cpu and ranks >= 1, got {self.ranks!r} on {self.device}")
        if self.ranks is not None and self.stages is not None and self.stages % self.ranks:
            raise CostError(f"--ranks {self.ranks} needs the stages ({self.stages}) to be a multiple of the ranks")
        if self.repeats < 1 or self.warmup < 0:
            raise CostError(f"need repeats >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}")


@dataclass(frozen=True, slots=True, kw_only=True)
class StageTimes:
    forward: float
    backward: float
    backward_input: float
    backward_weight: float
    activation_bytes: int
    output_bytes: int
    params: int
    optimizer: float = 0.0
    """Time of clipping + AdamW over the stage's parameters."""


def profile_model(request: ProfileRequest, *, progress: Callable[[str], object] = log.info) -> CostProfile:
    """Measure the model split into `request.stages` stages (and, with `layers`, finest);
    then, as asked, point-to-point transfers and a calibration run on `ranks` ranks."""
    import torch

    from ppc.costs import CostModel
    from ppc.frontend import build_split
    from ppc.plan.cost_profile import LayerSpec

    device = torch.device(request.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CostError("--device cuda but torch sees no CUDA device")
    stages = request.stages or _finest(request)
    split = build_split(request.model, stages=stages, seq_len=request.seq_len,
                        microbatch_size=request.microbatch_size, by=request.by, seed=request.seed)
    from ppc.host import threads_per_rank

    # as each rank of the run will; alone, the cores this process may use (not torch's
    # default, the machine's cores, which oversubscribes a loaded or restricted host)
    torch.set_num_threads(threads_per_rank(request.ranks or 1))
    times = measure_split(split, request, device)
    layers: tuple = ()
    if request.layers and request.stages is not None:
        finest = _finest(request)
        if finest > stages:
            fine = build_split(request.model, stages=finest, seq_len=request.seq_len,
                               microbatch_size=request.microbatch_size, by="layers", seed=request.seed)
            fine_times = measure_split(fine, request, device)
            layers = tuple(
                LayerSpec(name=f"unit{i}", forward=t.forward, backward_input=t.backward_input,
                          backward_weight=t.backward_weight, params=t.params,
                          activation_bytes=t.activation_bytes, output_bytes=t.output_bytes)
                for i, t in enumerate(fine_times)
            )
    costs = CostModel(
        forward=tuple(t.forward for t in times),
        backward_input=tuple(t.backward_input for t in times),
        backward_weight=tuple(t.backward_weight for t in times),
        activation_bytes=tuple(t.activation_bytes for t in times),
        unit="s",
        optimizer=tuple(t.optimizer for t in times),
    )
    profile = CostProfile(
        stage_costs=costs,
        layers=layers,
        microbatch_size=request.microbatch_size,
        seq_len=request.seq_len,
        stage_params=tuple(t.params for t in times),
        stage_output_bytes=tuple(t.output_bytes for t in times),
        meta={
            "model": request.model,
            "device": _device_name(device),
            "torch": torch.__version__,
            "timing": f"median of {request.repeats} after {request.warmup} warm-up runs",
            "B": [t.backward for t in times],
            "note": "I and W keep their measured ratio, scaled so that I + W equals the measured B",
        },
    )
    if request.p2p_bytes:
        from ppc.measure.p2p import measure_p2p

        progress("measuring point-to-point latency and bandwidth")
        p2p = measure_p2p(request.device, large_bytes=request.p2p_bytes)
        costs = dataclasses.replace(profile.stage_costs, latency=p2p.latency, bandwidth=p2p.bandwidth, post=p2p.post,
                                    collective_latency=p2p.collective_latency,
                                    collective_bandwidth=p2p.collective_bandwidth)
        profile = dataclasses.replace(profile, stage_costs=costs, meta={**profile.meta, "p2p": p2p.describe()})
    if request.ranks is None:
        return profile
    from ppc.measure.host_calibration import calibrate_on_host

    progress(f"calibration run on {request.ranks} ranks of this host")
    return calibrate_on_host(profile, request)


def _finest(request: ProfileRequest) -> int:
    """One stage per repeated block (the frontend cuts only between blocks)."""
    from ppc.frontend.models import load_config

    return int(load_config(request.model).num_hidden_layers)


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def measure_split(split, request: ProfileRequest, device) -> list[StageTimes]:
    """Per stage, times and bytes; stage s is fed the real outputs of stage s - 1."""
    import torch

    from ppc.frontend import materialize_stage
    from ppc.ir.stage_graph import INPUT

    values = {v.name: v for v in split.graph.values}
    env = _batch(split, request, device)
    out = []
    for stage in split.stages:
        module = materialize_stage(split, stage.index, device=device, seed=request.seed)
        params = [p for p in module.parameters() if p.requires_grad]
        grad_inputs = {
            name for name in stage.inputs
            if name in values and values[name].producer != INPUT and values[name].requires_grad
        }

        def run_forward(stage=stage, module=module, grad_inputs=grad_inputs):
            args = [
                env[name].detach().requires_grad_(name in grad_inputs and env[name].is_floating_point())
                for name in stage.inputs
            ]
            with _autocast(request, device):
                outs = module(*args)
            outs = (outs,) if isinstance(outs, torch.Tensor) else tuple(outs)
            return args, outs

        _args, outs = run_forward()
        for name, value in zip(stage.outputs, outs):
            env[name] = value.detach()
        times = _measure_stage(split, stage, run_forward, params, request, device, values, outs)
        out.append(dataclasses.replace(times, optimizer=_optimizer_time(params, request, device)))
        for p in params:
            p.grad = None
        log.info("stage %s: F=%.3gs I=%.3gs W=%.3gs", stage.index, out[-1].forward, out[-1].backward_input,
                 out[-1].backward_weight)
        del module
    return out


def _optimizer_time(params, request: ProfileRequest, device) -> float:
    """Median time of the executor's optimizer step (norm, clip, AdamW) over `params`."""
    import torch

    from ppc.exec.optim import clip_by_norm, make_adamw, squared_norm

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    optimizer = make_adamw(params, lr=1e-12, weight_decay=0.0)
    timer = _timer(device)

    def step():
        clip_by_norm(params, squared_norm(params).to(device), 1.0)
        optimizer.step()

    return _median(lambda: timer(step), request)


def _autocast(request: ProfileRequest, device):
    """The executor's autocast: bf16 on cuda unless fp32 was asked for."""
    import torch

    dtype = request.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if dtype == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _measure_stage(split, stage, run_forward, params, request, device, values, sample_outs) -> StageTimes:
    import torch

    from ppc.exec.autograd_split import backward_full, backward_input, backward_weight

    def roots_of(args, outs):
        roots, grads = [], []
        for name, value in zip(stage.outputs, outs):
            if name == split.loss_name:
                roots.append(value)
                grads.append(torch.ones_like(value))
            elif value.requires_grad and (name not in values or values[name].requires_grad):
                roots.append(value)
                grads.append(torch.ones_like(value) * 1e-3)
        leaves = [a for a in args if a.requires_grad]
        return roots, grads, leaves

    timer = _timer(device)
    # On a GPU the executor keeps the device busy while Python runs ahead, so one op's
    # cost is its throughput, not its latency: time `burst` back-to-back ops per sample.
    burst = _BURST if device.type == "cuda" else 1

    def graphs():
        return [roots_of(*run_forward()) for _ in range(burst)]

    def forward_only():
        def forwards():
            for _ in range(burst):
                run_forward()
        return timer(forwards) / burst

    def full():
        ready = graphs()
        return timer(lambda: [backward_full(r, g, leaves, params) for r, g, leaves in ready]) / burst

    def split_times():
        ready = graphs()
        works = []
        t_i = timer(lambda: works.extend(backward_input(r, g, leaves, params)[1] for r, g, leaves in ready))
        t_w = timer(lambda: [backward_weight(work) for work in works])
        return t_i / burst, t_w / burst

    f = _median(forward_only, request)
    b = _median(full, request)
    pairs = [split_times() for _ in range(request.warmup + request.repeats)][request.warmup:]
    t_i = statistics.median(p[0] for p in pairs)
    t_w = statistics.median(p[1] for p in pairs)
    # The simulator times a B as I + W; keep the measured I : W ratio but make the sum
    # the measured B, so schedules with a full backward are predicted at their real cost.
    share = t_i / (t_i + t_w) if t_i + t_w > 0 else 0.5
    sent = sum(
        o.numel() * o.element_size()
        for name, o in zip(stage.outputs, sample_outs)
        if name != split.loss_name and name in values and values[name].consumers
    )
    return StageTimes(forward=f, backward=b, backward_input=b * share, backward_weight=b * (1 - share),
                      activation_bytes=_saved_bytes(run_forward, params), output_bytes=int(sent),
                      params=sum(p.numel() for p in params))


_BURST = 4
"""Ops timed back to back per sample on a GPU."""


def _median(fn: Callable[[], float], request: ProfileRequest) -> float:
    for _ in range(request.warmup):
        fn()
    return statistics.median(fn() for _ in range(request.repeats))


def _timer(device) -> Callable[[Callable[[], object]], float]:
    """Seconds one call takes: CUDA events on a GPU, perf_counter on the CPU."""
    import torch

    if device.type == "cuda":
        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        return timed

    def timed_cpu(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return timed_cpu


def _saved_bytes(run_forward, params) -> int:
    """Bytes of the distinct storages autograd saves in one forward, parameters excluded."""
    import torch

    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        args, outs = run_forward()
    del args, outs
    return int(sum(seen.values()))


def _batch(split, request: ProfileRequest, device) -> dict:
    """One microbatch of random token ids for every batch input."""
    import torch

    from ppc.frontend.models import load_config

    vocab = int(getattr(load_config(request.model), "vocab_size", 100))
    gen = torch.Generator().manual_seed(request.seed)
    shape = (request.microbatch_size, request.seq_len)
    return {name: torch.randint(0, vocab, shape, generator=gen).to(device) for name in split.batch_inputs}

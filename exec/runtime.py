"""The instruction interpreter: runs one rank's program for one training step.

Dispatch goes through one `{op kind: handler}` table built once from HANDLERS, which
holds one handler per op-table row (registered with `@handles(name)`). Adjacent communication
instructions form a group posted as one batch_isend_irecv; a received tensor is waited
for only by the op that reads it. Values handed between stages of the same rank never
touch the transport. Receive buffers are allocated once, from the tensor specs, when the
runtime is built. Every stage input that comes from another stage is a fresh leaf,
so each stage's backward stops at its own inputs and hands their gradients on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from ppc.exec.autograd_split import (
    WeightWork,
    backward_full,
    backward_input,
    backward_weight,
    free_storage,
)
from ppc.exec.p2p import BufferPool, Pending, Transport, spec_dtype

from ppc.errors import RunError
from ppc.ir.program import Instruction, Program
from ppc.ir.stage_graph import INPUT

log = logging.getLogger(__name__)

__all__ = ["HANDLERS", "RankRuntime", "handles"]

HANDLERS: dict[str, Callable] = {}
"""Runtime handler of each op-table kind, by op name: `handler(runtime, instruction)` for
compute and step-level ops, `handler(runtime, instruction, comm)` for transfers."""


def handles(name: str) -> Callable[[Callable], Callable]:
    """Register the decorated function as the runtime handler of op `name`."""

    def register(handler: Callable) -> Callable:
        HANDLERS[name] = handler
        return handler

    return register


def _bind_handlers(runtime: RankRuntime) -> dict:
    """{op kind: bound handler} for the ops this rank's program uses; an op without a
    handler stops the run before the first step, naming the rank and the instruction."""
    bound = {}
    for ins in [*runtime.instructions, *_flat(runtime.instructions)]:
        if ins.op not in bound:
            handler = HANDLERS.get(ins.op.name)
            if handler is None:
                raise RunError(f"rank {runtime.rank}: no runtime handler for instruction {ins} "
                               f"(op {ins.op.name})")
            bound[ins.op] = handler.__get__(runtime)
    return bound


@dataclass(slots=True)
class _Act:
    """What the forward of one (stage, mb) leaves for its backward."""

    inputs: list[tuple[str, torch.Tensor]]
    """Stage inputs that want a gradient (leaves), by value name."""
    outputs: list[tuple[str, torch.Tensor]]
    """Outputs a gradient can flow into: the loss and values with grad-needing consumers."""
    work: WeightWork | None = None
    """What the I left for the W."""
    buffers: list[torch.Tensor] = field(default_factory=list)


@dataclass(slots=True)
class _Saved:
    """What the forward of a (stage, mb) that is recomputed later keeps: its inputs (leaves
    as they were given to the stage) and the RNG state it started from."""

    args: list[torch.Tensor]
    rng: tuple


@dataclass(slots=True)
class _Comm:
    """The sends and receives one group of comm instructions posts together."""

    sends: list = field(default_factory=list)
    recvs: list = field(default_factory=list)
    after_post: list[Callable[[Pending], None]] = field(default_factory=list)


class RankRuntime:
    """Interprets `program.instructions[rank]` over the stage modules this rank owns."""

    def __init__(
        self,
        *,
        program: Program,
        split,
        rank: int,
        modules: dict[int, torch.nn.Module],
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
        on_reduce_tied: Callable[[Instruction], None] | None = None,
        on_reduce_grad: Callable[[Instruction], None] | None = None,
        on_step: Callable[[], None] | None = None,
        observer: Callable[[int, Instruction], None] | None = None,
        trace: bool = False,
        group=None,
    ):
        """`rank` is this process's pipeline rank; `group` the pipeline's process group,
        through which peers are addressed (None: the pipeline is the default group)."""
        self.program, self.split, self.rank = program, split, rank
        self.modules, self.device, self.autocast_dtype = modules, device, autocast_dtype
        self.instructions = program.instructions[rank]
        self.groups = _groups(self.instructions)
        self.values = {v.name: v for v in split.graph.values}
        self.params = {s: [p for p in m.parameters() if p.requires_grad] for s, m in modules.items()}
        self.pool = BufferPool(device)
        self.transport = Transport(device=device, pool=self.pool, group=group)
        self._preallocate()
        self._on_reduce_tied, self._on_step, self._observer = on_reduce_tied, on_step, observer
        self._on_reduce_grad = on_reduce_grad
        self._uses = self._count_uses()
        self._dropping = {(ins.stage, ins.mb) for ins in _flat(self.instructions)
                          if "forward" in ins.op.drops}
        """(stage, mb) pairs whose forward keeps only its inputs (a later op recomputes it)."""
        self.trace_records: list[tuple[str, float, float, float]] | None = [] if trace else None
        """(name, start, end, CPU seconds of this thread in between) per traced slice."""
        self.current: tuple[int, Instruction] | None = None
        self.handlers = _bind_handlers(self)

    # ----- the step loop -------------------------------------------------------------

    def run_step(self, step: int, batch: list[dict[str, torch.Tensor]]) -> dict[int, float]:
        """Run the program once; returns {mb: loss} where this rank computes the loss."""
        self._begin(step, batch)
        for start, end, is_comm in self.groups:
            if is_comm:
                self._run_comm(step, self.instructions[start:end])
            else:
                self._run_compute(step, self.instructions[start])
        self._wait_all()
        losses = {mb: float(loss) for mb, loss in self._losses.items()}
        self._end()
        return losses

    def _begin(self, step: int, batch: list[dict[str, torch.Tensor]]) -> None:
        self._step_index = step
        self._batch = batch
        self._fwd: dict[tuple[str, int], tuple[torch.Tensor, Pending | None]] = {}
        self._left = Counter(self._uses)
        self._out_grads: dict[tuple[str, int], list[tuple[torch.Tensor, Pending | None]]] = {}
        self._in_grads: dict[tuple[str, int], torch.Tensor] = {}
        self._acts: dict[tuple[int, int], _Act] = {}
        self._saved: dict[tuple[int, int], _Saved] = {}
        self._losses: dict[int, torch.Tensor] = {}
        self._inflight: list[Pending] = []
        self._step_buffers: list[torch.Tensor] = []

    def _end(self) -> None:
        for buf in self._step_buffers:
            self.pool.give(buf)
        if self._acts:
            left = ", ".join(f"{s}:{m}" for s, m in self._acts)
            raise RunError(f"rank {self.rank}: backward never ran for (stage:mb) {left}")
        self._begin(self._step_index, [])

    def _run_compute(self, step: int, ins: Instruction) -> None:
        self.current = (step, ins)
        if self._observer is not None:
            self._observer(step, ins)
        handler = self.handlers[ins.op]
        if self.trace_records is None:
            handler(ins)
            return
        self._await_inputs(ins)
        start, cpu = time.perf_counter(), time.thread_time()
        handler(ins)
        self._record(str(ins), start, cpu)

    def _await_inputs(self, ins: Instruction) -> None:
        """Wait for the receives `ins` reads before it starts, so a trace shows the wait as
        its own `wait` slice instead of inside the op (only when tracing)."""
        if ins.op.reads == "activations":
            names = self.split.stages[ins.stage].inputs
            slots = [self._fwd.get((name, ins.mb)) for name in names]
            pending = [slot[1] for slot in slots if slot is not None and slot[1] is not None]
        elif ins.op.reads == "gradients":
            act = self._acts.get((ins.stage, ins.mb))
            names = [name for name, _ in act.outputs] if act is not None else []
            pending = [p for name in names for _, p in self._out_grads.get((name, ins.mb), ()) if p is not None]
        else:
            pending = []
        pending = [p for p in pending if not p.done]
        if pending:
            start, cpu = time.perf_counter(), time.thread_time()
            for p in pending:
                p.wait()
            self._record(f"wait {ins}", start, cpu)

    def _run_comm(self, step: int, group: tuple[Instruction, ...]) -> None:
        self.current = (step, group[0])
        if self._observer is not None:
            self._observer(step, group[0])
        tracing = self.trace_records is not None
        if tracing:
            start, cpu = time.perf_counter(), time.thread_time()
        comm = _Comm()
        for ins in group:
            self.handlers[ins.op](ins, comm)
        pending = self.transport.post(comm.sends, comm.recvs)
        for callback in comm.after_post:
            callback(pending)
        self._inflight.append(pending)
        if tracing:
            self._record(" ".join(f"{i}{'>' if i.op.is_send else '<'}{i.peer}" for i in group), start, cpu)

    def _record(self, name: str, start: float, cpu: float) -> None:
        """Only called while tracing."""
        self.trace_records.append((name, start, time.perf_counter(), time.thread_time() - cpu))

    def _wait_all(self) -> None:
        for pending in self._inflight:
            pending.wait()
        self._inflight.clear()

    # ----- compute ---------------------------------------------------------------------

    @handles("F")
    def _forward(self, ins: Instruction) -> None:
        stage = self.split.stages[ins.stage]
        args = [self._input(name, ins) for name in stage.inputs]
        key = (ins.stage, ins.mb)
        if key in self._dropping:  # recomputed later: keep the inputs and the RNG state only
            self._saved[key] = _Saved(args=args, rng=self._rng_state())
            with torch.no_grad(), self._autocast():
                outs = self.modules[ins.stage](*args)
            self._publish(ins, stage, outs)
            return
        with self._autocast():
            outs = self.modules[ins.stage](*args)
        self._publish(ins, stage, outs)
        self._acts[key] = _Act(inputs=_leaves(stage, args), outputs=self._kept(stage, outs))

    @handles("RF")
    def _recompute(self, ins: Instruction) -> None:
        """The forward again, with grad, from the inputs and RNG state its dropping forward
        kept; its outputs were already sent or handed on, so they only feed the backward."""
        saved = self._saved.pop((ins.stage, ins.mb), None)
        if saved is None:
            raise RunError(f"rank {self.rank}: {ins} runs before the forward of its microbatch")
        stage = self.split.stages[ins.stage]
        with torch.random.fork_rng(devices=self._rng_devices(), device_type=self.device.type):
            self._set_rng_state(saved.rng)
            with self._autocast():
                outs = self.modules[ins.stage](*saved.args)
        self._acts[(ins.stage, ins.mb)] = _Act(inputs=_leaves(stage, saved.args),
                                               outputs=self._kept(stage, outs))

    def _publish(self, ins: Instruction, stage, outs) -> None:
        """Record the loss and hand outputs to the sends and local stages that read them."""
        for name, out in zip(stage.outputs, _as_tuple(outs)):
            if name == self.split.loss_name:
                self._losses[ins.mb] = out.detach()
            elif self._left[(name, ins.mb)]:
                self._fwd[(name, ins.mb)] = (out, None)

    def _kept(self, stage, outs) -> list[tuple[str, torch.Tensor]]:
        """Outputs a gradient can flow into: the loss and values with grad-needing consumers."""
        keep = []
        for name, out in zip(stage.outputs, _as_tuple(outs)):
            value = self.values.get(name)
            if name == self.split.loss_name or (value is not None and value.requires_grad and out.requires_grad):
                keep.append((name, out))
        return keep

    def _rng_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    def _rng_state(self) -> tuple:
        device = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), device

    def _set_rng_state(self, state: tuple) -> None:
        cpu, device = state
        torch.set_rng_state(cpu)
        if device is not None:
            torch.cuda.set_rng_state(device, self.device)

    def _input(self, name: str, ins: Instruction) -> torch.Tensor:
        value = self.values.get(name)
        if value is None or value.producer == INPUT:
            batch = self._batch[ins.mb]
            if name not in batch:
                raise RunError(f"rank {self.rank}: stage {ins.stage} reads unknown input {name!r}")
            return batch[name].to(self.device, non_blocking=True)
        tensor = self._fetch(name, ins.mb, ins)
        wants_grad = value.requires_grad and tensor.is_floating_point()
        return tensor.detach().requires_grad_(wants_grad)

    def _fetch(self, name: str, mb: int, ins: Instruction) -> torch.Tensor:
        slot = self._fwd.get((name, mb))
        if slot is None:
            raise RunError(f"rank {self.rank}: {ins} needs {name!r} of microbatch {mb}, never received")
        tensor, pending = slot
        if pending is not None:
            pending.wait()
        self._use(name, mb)
        return tensor

    def _use(self, name: str, mb: int) -> None:
        self._left[(name, mb)] -= 1
        if self._left[(name, mb)] <= 0:
            self._fwd.pop((name, mb), None)

    def _roots(self, ins: Instruction) -> tuple[_Act, list[torch.Tensor], list[torch.Tensor]]:
        act = self._acts.get((ins.stage, ins.mb))
        if act is None:
            raise RunError(f"rank {self.rank}: {ins} runs before the forward of its microbatch")
        roots, grads = [], []
        for name, out in act.outputs:
            if name == self.split.loss_name:
                grad = torch.full_like(out, 1.0 / self.program.microbatches)
            else:
                grad = self._grad_of(name, ins.mb, act)
                if grad is None:
                    continue
                grad = grad.to(out.dtype)
            roots.append(out)
            grads.append(grad)
        return act, roots, grads

    def _grad_of(self, name: str, mb: int, act: _Act) -> torch.Tensor | None:
        total = None
        for grad, pending in self._out_grads.pop((name, mb), []):
            if pending is not None:
                pending.wait()
                act.buffers.append(grad)
            total = grad if total is None else total + grad
        return total

    def _hand_back(self, ins: Instruction, act: _Act, grads) -> None:
        for (name, _leaf), grad in zip(act.inputs, grads):
            if grad is None:
                continue
            value = self.values[name]
            if self.program.placement[value.producer] == self.rank:
                self._out_grads.setdefault((name, ins.mb), []).append((grad, None))
            else:
                key = (name, ins.mb)
                self._in_grads[key] = grad if key not in self._in_grads else self._in_grads[key] + grad

    def _release(self, ins: Instruction, act: _Act) -> None:
        del self._acts[(ins.stage, ins.mb)]
        for buf in act.buffers:
            self.pool.give(buf)

    @handles("B")
    def _backward_full(self, ins: Instruction) -> None:
        act, roots, grads = self._roots(ins)
        leaves = [leaf for _, leaf in act.inputs]
        self._hand_back(ins, act, backward_full(roots, grads, leaves, self.params[ins.stage]))
        self._release(ins, act)

    @handles("I")
    def _backward_input(self, ins: Instruction) -> None:
        act, roots, grads = self._roots(ins)
        leaves = [leaf for _, leaf in act.inputs]
        input_grads, act.work = backward_input(roots, grads, leaves, self.params[ins.stage])
        act.outputs = []  # W starts inside the graph; the outputs are no longer needed
        self._hand_back(ins, act, input_grads)

    @handles("W")
    def _backward_weight(self, ins: Instruction) -> None:
        act = self._acts.get((ins.stage, ins.mb))
        if act is None or act.work is None:
            raise RunError(f"rank {self.rank}: {ins} runs before the I of its microbatch")
        backward_weight(act.work)
        self._release(ins, act)

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ----- communication ------------------------------------------------------------

    @handles("SEND_F")
    def _send_f(self, ins: Instruction, comm: _Comm) -> None:
        tensors, originals = [], []
        for spec in ins.tensors:
            tensor, _ = self._fwd.get((spec.name, ins.mb), (None, None))
            if tensor is None:
                raise RunError(f"rank {self.rank}: {ins} sends {spec.name!r}, never computed")
            tensors.append(tensor.detach().to(spec_dtype(spec)).contiguous())
            self._left[(spec.name, ins.mb)] -= 1
            if self._left[(spec.name, ins.mb)] <= 0:
                self._fwd.pop((spec.name, ins.mb), None)
                originals.append(tensor)
        comm.sends.append((ins.peer, tensors))
        comm.after_post.append(lambda p: p.on_done.extend(_freer(originals, tensors)))

    @handles("SEND_B")
    def _send_b(self, ins: Instruction, comm: _Comm) -> None:
        tensors = []
        for spec in ins.tensors:
            grad = self._in_grads.pop((spec.name, ins.mb), None)
            if grad is None:
                grad = torch.zeros(spec.shape, dtype=spec_dtype(spec), device=self.device)
            tensors.append(grad.to(spec_dtype(spec)).contiguous())
        comm.sends.append((ins.peer, tensors))
        comm.after_post.append(lambda p: p.on_done.append(lambda: tensors.clear()))

    @handles("RECV_F")
    def _recv_f(self, ins: Instruction, comm: _Comm) -> None:
        bufs = [self.pool.take(spec) for spec in ins.tensors]
        self._step_buffers.extend(bufs)
        comm.recvs.append((ins.peer, bufs))

        def fill(pending: Pending) -> None:
            for spec, buf in zip(ins.tensors, bufs):
                self._fwd[(spec.name, ins.mb)] = (buf, pending)

        comm.after_post.append(fill)

    @handles("RECV_B")
    def _recv_b(self, ins: Instruction, comm: _Comm) -> None:
        bufs = [self.pool.take(spec) for spec in ins.tensors]
        comm.recvs.append((ins.peer, bufs))

        def fill(pending: Pending) -> None:
            for spec, buf in zip(ins.tensors, bufs):
                self._out_grads.setdefault((spec.name, ins.mb), []).append((buf, pending))

        comm.after_post.append(fill)

    # ----- step-level -----------------------------------------------------------------

    @handles("REDUCE_TIED")
    def _reduce_tied(self, ins: Instruction) -> None:
        if self._on_reduce_tied is not None:
            self._on_reduce_tied(ins)

    @handles("REDUCE_GRAD")
    def _reduce_grad(self, ins: Instruction) -> None:
        """Start the stage's gradient reduction across the replicas and go on: the STEP
        waits for it (exec/dp.py)."""
        if self._on_reduce_grad is not None:
            self._on_reduce_grad(ins)

    @handles("FB")
    @handles("FI")
    def _overlapped(self, ins: Instruction) -> None:
        """A forward and a backward as one unit: here the two parts back to back (as torch
        runs OVERLAP_F_B by default). Real overlap (the backward's communication hidden under
        the forward's compute, DualPipe's chunk interleaving) plugs in by registering
        another handler for FB / FI with `@handles`."""
        for part in ins.parts:
            self.handlers[part.op](part)

    @handles("STEP")
    def _step(self, ins: Instruction) -> None:
        self._wait_all()
        if self._on_step is not None:
            self._on_step()

    def _preallocate(self) -> None:
        """Fill the pool from the tensor specs with as many receive buffers of each
        (shape, dtype) as the program holds at once, so that no receive allocates.

        A received activation is held until the step ends; a received gradient until the
        B or W of the stage that produced its value."""
        live: Counter = Counter()
        peak: Counter = Counter()
        held: dict[tuple[int, int], list[tuple]] = {}
        for ins in _flat(self.instructions):
            if ins.op.is_recv:
                for spec in ins.tensors:
                    key = (tuple(spec.shape), spec_dtype(spec))
                    live[key] += 1
                    peak[key] = max(peak[key], live[key])
                    value = self.values.get(spec.name)
                    if ins.op.carries == "gradients" and value is not None:
                        held.setdefault((value.producer, ins.mb), []).append(key)
            elif "weight_grad" in ins.op.phases:
                for key in held.pop((ins.stage, ins.mb), []):
                    live[key] -= 1
        for (shape, dtype), count in peak.items():
            for _ in range(count):
                self.pool.give(torch.empty(shape, dtype=dtype, device=self.device))

    def _count_uses(self) -> Counter:
        """Per (value, mb): local forwards that read it plus sends that carry it."""
        uses: Counter = Counter()
        for ins in _flat(self.instructions):
            if ins.op.reads == "activations":
                for name in self.split.stages[ins.stage].inputs:
                    value = self.values.get(name)
                    if value is not None and value.producer != INPUT:
                        uses[(name, ins.mb)] += 1
            elif ins.op.is_send and ins.op.carries == "activations":
                for spec in ins.tensors:
                    uses[(spec.name, ins.mb)] += 1
        return uses


def _as_tuple(outs) -> tuple:
    return (outs,) if isinstance(outs, torch.Tensor) else tuple(outs)


def _leaves(stage, args: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Stage inputs that want a gradient, by value name."""
    return [(name, t) for name, t in zip(stage.inputs, args) if t.requires_grad]


def _freer(originals: list[torch.Tensor], sent: list[torch.Tensor]) -> list[Callable[[], None]]:
    """Callbacks that drop sent outputs once the send completed."""

    def free() -> None:
        for tensor in originals:
            free_storage(tensor)
        sent.clear()

    return [free]


def _flat(instructions):
    """The instructions with each overlapped op replaced by its parts, in order."""
    for ins in instructions:
        if ins.parts:
            yield from ins.parts
        else:
            yield ins


def _groups(instructions: tuple[Instruction, ...]) -> list[tuple[int, int, bool]]:
    """(start, end, is_comm) runs: adjacent comm instructions together, compute one by one."""
    groups, i = [], 0
    while i < len(instructions):
        if instructions[i].op.is_comm:
            j = i
            while j < len(instructions) and instructions[j].op.is_comm:
                j += 1
            groups.append((i, j, True))
            i = j
        else:
            groups.append((i, i + 1, False))
            i += 1
    return groups

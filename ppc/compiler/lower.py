"""Lowering: compute order (+ stage graph) -> per-rank instruction lists.

Requires: a compute order that runs every op once, on its stage's rank, F before the
backward and I before W (checked here, with precise messages).
Guarantees: every value that crosses ranks travels as one SEND/RECV pair per
(producer stage, consumer rank, direction, microbatch); each receive sits right before
the op that reads it as far as the predicted timeline allows; the program is
deadlock-free with blocking (rendezvous) point-to-point semantics.

How: the compute order is timed (ppc.compiler.predict) and its ops put in one total
order by (predicted start, level), which is topological. Each transfer is placed, for
BOTH its send and its receive, right before one compute op X of that order with
producer < X <= consumer: X is the consumer, unless the send would then wait behind an
op on the sender that ends too late for the message to arrive in time, in which case X
is that op. Every rank's program is a subsequence of one total order in which each
transfer follows its producer and precedes its consumer, so with rendezvous semantics
the smallest unfinished event can always proceed: no deadlock. With the costs used for
placement and free communication, the receives never delay the predicted timeline.
"""

from __future__ import annotations

import bisect
import logging

from ppc.compiler.predict import Prediction, cross_rank_deps, predict, transfer_bytes
from ppc.compiler.reduce import add_grad_reductions
from ppc.costs import CostModel
from ppc.errors import CostError, ValidationError
from ppc.ir.ops import Op
from ppc.ir.order import ComputeOrder
from ppc.ir.program import Instruction, Program, TensorSpec, make
from ppc.ir.routes import Route, graph_notes, plan_routes
from ppc.ir.stage_graph import StageGraph, synthetic_chain
from ppc.verify.order import ComputeIndex, first_forward_of, index_order, last_backward_of

log = logging.getLogger(__name__)

_EPS = 1e-9


def lower(
    order: ComputeOrder, graph: StageGraph | None = None, *, costs: CostModel | None = None,
    dp: int = 1,
) -> Program:
    """Lower `order` to a Program; `costs` (default uniform) only guides placement; with
    `dp` > 1 pipeline replicas, each stage's gradients are reduced across them."""
    graph = graph or synthetic_chain(order.stages)
    if graph.num_stages != order.stages:
        raise ValidationError(
            f"the model has {graph.num_stages} stages but schedule {order.schedule} has "
            f"{order.stages} (ranks x virtual)"
        )
    costs = costs or CostModel.uniform(order.stages)
    if costs.stages != order.stages:
        raise CostError(f"costs give {costs.stages} stages, the schedule has {order.stages}")
    routes = plan_routes(graph, order.placement)
    index = index_order(order, routes)
    prediction = predict(index, order.ranks, cross_rank_deps(index, routes, costs), costs)
    rows = _place(index, order.ranks, routes, prediction, costs)
    add_grad_reductions(rows, graph, dp)
    _append_step_ops(rows, graph, order.placement)
    log.info("lowered %s: %d instructions", order.schedule, sum(len(r) for r in rows))
    return Program(
        schedule=order.schedule,
        ranks=order.ranks,
        stages=order.stages,
        microbatches=order.microbatches,
        placement=order.placement,
        instructions=tuple(tuple(r) for r in rows),
        notes=graph_notes(graph, order.placement),
    )


def _place(
    index: ComputeIndex,
    ranks: int,
    routes: tuple[Route, ...],
    pred: Prediction,
    costs: CostModel,
) -> list[list[Instruction]]:
    """Each rank's compute ops and transfers, sorted by their keys in the total order.

    Compute op g has key (2 seq[g] + 1) * width; a transfer placed before op X has key
    2 seq[X] * width + its id, so it sorts after every op before X and before X.
    """
    seq = _total_order(pred)
    width = 2 * sum(len(r.consumers) + len(r.grad_consumers) for r in routes) * index.microbatches + 2
    keys: list[list[int]] = [[] for _ in range(ranks)]
    instrs: list[list[Instruction]] = [[] for _ in range(ranks)]
    composite = index.parts
    for g, (kind, stage, mb) in enumerate(index.ops):
        r = index.rank_of[g]
        keys[r].append((2 * seq[g] + 1) * width)
        parts = composite.get(g)
        instrs[r].append(make(kind, stage, mb, parts=tuple(make(*p) for p in parts) if parts else ()))
    slots = _Slots(index, pred, seq)
    for tid, (x, send_rank, send, recv_rank, recv) in enumerate(_transfers(index, routes, costs, slots)):
        key = 2 * x * width + tid
        keys[send_rank].append(key)
        instrs[send_rank].append(send)
        keys[recv_rank].append(key)
        instrs[recv_rank].append(recv)
    rows = []
    for rkeys, rinstrs in zip(keys, instrs):
        order = sorted(range(len(rkeys)), key=rkeys.__getitem__)
        rows.append([rinstrs[i] for i in order])
    return rows


def _total_order(pred: Prediction) -> list[int]:
    """seq[g]: position of op g when ordered by (predicted start, level, g): topological."""
    start, level = pred.start, pred.level
    seq = [0] * len(start)
    for i, g in enumerate(sorted(range(len(start)), key=lambda g: (start[g], level[g], g))):
        seq[g] = i
    return seq


class _Slots:
    """Chooses the compute op X a transfer sits before (as its seq)."""

    def __init__(self, index: ComputeIndex, pred: Prediction, seq: list[int]):
        self.index, self.start, self.seq = index, pred.start, seq
        ends = pred.end
        self.eps = _EPS * max(1.0, max(ends, default=0.0))
        bounds = index.offset[1:] + [len(index.ops)]
        self.ends_by_rank = [ends[a:b] for a, b in zip(index.offset, bounds)]

    def __call__(self, producer: int, consumer: int, seconds: float) -> int:
        """The consumer, or the first op after the producer on the sender that ends too
        late for the message to arrive in time (then the send goes before that op)."""
        r = self.index.rank_of[producer]
        base = self.index.offset[r]
        ends = self.ends_by_rank[r]
        deadline = self.start[consumer] - seconds + self.eps
        k = bisect.bisect_right(ends, deadline, producer - base + 1)
        seq = self.seq
        if k < len(ends) and seq[base + k] < seq[consumer]:
            return seq[base + k]
        return seq[consumer]


def _transfers(index: ComputeIndex, routes, costs: CostModel, slot: _Slots):
    """(X, sending rank, SEND, receiving rank, RECV) for every transfer, in a fixed order."""
    send_f, recv_f, send_b, recv_b = Op.SEND_F, Op.RECV_F, Op.SEND_B, Op.RECV_B
    for route in routes:
        if route.local:
            continue
        p, q = route.producer, route.rank
        r = index.rank_of[index.forward(p, 0)]
        tensors = route.forward
        seconds = costs.transfer(transfer_bytes(tensors))
        pairs = zip(index.forward_column(p), first_forward_of(index, route.consumers))
        for mb, (producer, consumer) in enumerate(pairs):
            c = index.ops[consumer][1]
            yield (
                slot(producer, consumer, seconds),
                r, make(send_f, p, mb, q, c, tensors),
                q, make(recv_f, c, mb, r, p, tensors),
            )
        if not route.grad_consumers:
            continue
        tensors = route.backward
        seconds = costs.transfer(transfer_bytes(tensors))
        pairs = zip(last_backward_of(index, route.grad_consumers), index.backward_column(p))
        for mb, (producer, consumer) in enumerate(pairs):
            c = index.ops[producer][1]
            yield (
                slot(producer, consumer, seconds),
                q, make(send_b, c, mb, r, p, tensors),
                r, make(recv_b, p, mb, q, c, tensors),
            )


def _append_step_ops(rows: list[list[Instruction]], graph: StageGraph, placement) -> None:
    """One REDUCE_TIED per tied weight on each owning rank, then STEP last everywhere."""
    for tied in graph.tied:
        spec = tied.spec or TensorSpec(name=tied.name, shape=(), dtype="unknown", bytes=0)
        for rank in sorted({placement[s] for s in tied.stages}):
            stage = min(s for s in tied.stages if placement[s] == rank)
            rows[rank].append(Instruction(op=Op.REDUCE_TIED, stage=stage, mb=0, tensors=(spec,)))
    first: dict[int, int] = {}
    for stage, rank in enumerate(placement):
        first.setdefault(rank, stage)
    for rank, row in enumerate(rows):
        row.append(Instruction(op=Op.STEP, stage=first.get(rank, 0), mb=0))

"""The dependency structure of a Program: instructions as int nodes, matched transfers.

`ProgramGraph` holds flat arrays (global id g = offset[rank] + position) so the
validation and timeline passes stay linear on programs of a million instructions;
`to_networkx` builds the full networkx DiGraph (program order, send -> recv, stage data
dependencies F->F, B->B, F->B, I->W) for inspection and cycle search.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from ppc.errors import ValidationError
from ppc.ir import ops
from ppc.ir.ops import Category, OpKind
from ppc.ir.program import Instruction, Program, codes
from ppc.ir.routes import Route, plan_routes
from ppc.ir.stage_graph import StageGraph, synthetic_chain
from ppc.verify.order import ComputeIndex, check_local_routes, index_compute

FORWARD, BACKWARD = 0, 1


@dataclass(slots=True, kw_only=True)
class ProgramGraph:
    program: Program
    offset: list[int]
    """offset[r] = global id of rank r's first instruction."""
    instrs: list[Instruction]
    code: list[int]
    """code[g] = op-table code of instruction g."""
    rank_of: list[int]
    partner: list[int]
    """partner[g] = the matching send/receive of a transfer, else -1."""
    sends: dict[int, int]
    """Send instruction by transfer key (see `key_of`)."""
    groups: dict[str, list[int]]
    """Collective instructions by op and tensor name: one collective each."""
    compute: ComputeIndex
    """Compute ops; compute_gid[c] is the instruction id of compute op c."""
    compute_gid: list[int]
    routes: tuple[Route, ...]

    def where(self, g: int) -> str:
        r = self.rank_of[g]
        return f"{self.instrs[g]} on rank {r} (position {g - self.offset[r]})"

    def position(self, g: int) -> int:
        return g - self.offset[self.rank_of[g]]

    def key_of(self, direction: int, stage: int, mb: int, src: int, dst: int) -> int:
        """Integer key of a transfer (as in `transfer_key`), unique within the program."""
        p = self.program
        return (((direction * p.stages + stage) * p.microbatches + mb) * p.ranks + src) * p.ranks + dst


def transfer_key(instr: Instruction, rank: int) -> tuple[int, int, int, int, int]:
    """(direction, route producer stage, mb, sending rank, receiving rank) of a transfer.

    The route's producer is the stage whose activations travel: the sender's stage for
    activations, the receiver's stage for the gradients that come back to it.
    """
    op = instr.op
    backward = op.carries == "gradients"
    src, dst = (rank, instr.peer) if op.is_send else (instr.peer, rank)
    own_is_producer = op.is_send != backward
    stage = instr.stage if own_is_producer else instr.peer_stage
    return (BACKWARD if backward else FORWARD, stage, instr.mb, src, dst)


def collective_name(instr: Instruction) -> str:
    """The collective an instruction joins: its op and first tensor (or stage)."""
    return f"{instr.op.name}:{instr.tensors[0].name if instr.tensors else instr.stage}"


def describe_key(key) -> str:
    direction, stage, mb, src, dst = key
    what = "activations" if direction == FORWARD else "gradients"
    return f"{what} of stage {stage} microbatch {mb} from rank {src} to rank {dst}"


def build(program: Program, graph: StageGraph | None = None) -> ProgramGraph:
    """Index and match a program; raises ValidationError on malformed instructions."""
    if len(program.instructions) != program.ranks:
        raise ValidationError(
            f"program has {len(program.instructions)} instruction lists for {program.ranks} ranks"
        )
    offset, instrs, rank_of = [], [], []
    for rank, row in enumerate(program.instructions):
        offset.append(len(instrs))
        instrs.extend(row)
        rank_of.extend([rank] * len(row))
    try:
        code = codes(instrs)
    except AttributeError:
        bad = next(g for g, i in enumerate(instrs) if not isinstance(i.op, OpKind))
        raise ValidationError(f"rank {rank_of[bad]}: unknown instruction {instrs[bad].op!r}") from None
    _check_steps(program, code)
    compute, compute_gid, positions = _index_compute(program, instrs, code, offset)
    pg = ProgramGraph(
        program=program, offset=offset, instrs=instrs, code=code, rank_of=rank_of,
        partner=[-1] * len(instrs), sends={}, groups={}, compute=compute,
        compute_gid=compute_gid, routes=(),
    )
    _match(pg)
    pg.routes = _routes(program, graph, instrs, code, rank_of)
    check_local_routes(compute, pg.routes, positions=positions)
    collective = ops.Codes.get().is_collective
    for g, c in enumerate(code):
        if collective[c]:
            pg.groups.setdefault(collective_name(instrs[g]), []).append(g)
    return pg


def _check_steps(program: Program, code: list[int]) -> None:
    for rank, row in enumerate(program.instructions):
        if not row or row[-1].op.category is not Category.STEP:
            raise ValidationError(f"rank {rank}: STEP must be the last instruction")
    is_step = ops.Codes.get().is_step
    if sum(is_step[c] for c in code) != program.ranks:
        raise ValidationError("STEP must appear once per rank")


def _check_comm(program: Program, instr: Instruction, rank: int) -> None:
    """Raise the precise message for a transfer instruction with a bad field."""
    R, S, placement = program.ranks, program.stages, program.placement
    peer, ps, stage = instr.peer, instr.peer_stage, instr.stage
    if peer is None or not 0 <= peer < R or peer == rank:
        raise ValidationError(f"rank {rank}: {instr} has bad peer rank {peer!r}")
    if ps is None or not 0 <= ps < S or placement[ps] != peer:
        raise ValidationError(f"rank {rank}: {instr} names peer stage {ps!r}, which is not on rank {peer}")
    if not 0 <= stage < S or placement[stage] != rank:
        raise ValidationError(f"rank {rank}: {instr} names stage {stage}, not on rank {rank}")
    raise ValidationError(f"rank {rank}: {instr} names microbatch {instr.mb}, out of range")


def _index_compute(program: Program, instrs, code, offset):
    rows, positions, compute_gid = [], [], []
    is_compute = ops.Codes.get().is_compute
    for rank, row in enumerate(program.instructions):
        rrow, rpos = [], []
        base = offset[rank]
        for i, instr in enumerate(row):
            if is_compute[code[base + i]]:
                rrow.append((instr.op, instr.stage, instr.mb,
                             tuple((p.op, p.stage, p.mb) for p in instr.parts)))
                rpos.append(i)
                compute_gid.append(base + i)
        rows.append(rrow)
        positions.append(rpos)
    index = index_compute(
        rows, placement=program.placement, microbatches=program.microbatches, positions=positions
    )
    return index, compute_gid, positions


def _match(pg: ProgramGraph) -> None:
    """Check transfer fields and pair each send with its receive (by transfer key)."""
    program = pg.program
    instrs, code, rank_of, partner, sends = pg.instrs, pg.code, pg.rank_of, pg.partner, pg.sends
    recvs: dict[int, int] = {}
    R, S, M, placement = program.ranks, program.stages, program.microbatches, program.placement
    codes_ = ops.Codes.get()
    is_comm, is_send, backward = codes_.is_comm, codes_.is_send, codes_.backward_comm
    for g, c in enumerate(code):
        if not is_comm[c]:
            continue
        instr = instrs[g]
        rank, peer, stage, ps, mb = rank_of[g], instr.peer, instr.stage, instr.peer_stage, instr.mb
        if (
            peer is None or ps is None or not (0 <= peer < R and 0 <= ps < S and 0 <= stage < S)
            or peer == rank or placement[ps] != peer or placement[stage] != rank or not 0 <= mb < M
        ):
            _check_comm(program, instr, rank)
        send, back = is_send[c], backward[c]
        producer = stage if send != back else ps
        src, dst = (rank, peer) if send else (peer, rank)
        key = ((((S if back else 0) + producer) * M + mb) * R + src) * R + dst
        table = sends if send else recvs
        if key in table:
            raise ValidationError(
                f"duplicate transfer of {describe_key(transfer_key(instr, rank))}: "
                f"{pg.where(table[key])} and {pg.where(g)}"
            )
        table[key] = g
    for key, s in sends.items():
        r = recvs.pop(key, None)
        if r is None:
            what = describe_key(transfer_key(instrs[s], rank_of[s]))
            raise ValidationError(f"unmatched send {pg.where(s)}: nobody receives the {what}")
        a, b = instrs[s], instrs[r]
        same = a.peer_stage == b.stage and a.stage == b.peer_stage and a.op.carries == b.op.carries
        if not same or (a.tensors is not b.tensors and a.tensors != b.tensors):
            raise ValidationError(f"{pg.where(s)} and {pg.where(r)} disagree on stages or tensor specs")
        partner[s] = r
        partner[r] = s
    if recvs:
        r = next(iter(recvs.values()))
        what = describe_key(transfer_key(instrs[r], rank_of[r]))
        raise ValidationError(f"unmatched receive {pg.where(r)}: nobody sends the {what}")


def _routes(program, graph, instrs, code, rank_of) -> tuple[Route, ...]:
    """The graph's routes; without a graph, the chain's plus those the transfers declare."""
    if graph is not None:
        return plan_routes(graph, program.placement)
    routes = {(r.producer, r.rank): r for r in plan_routes(synthetic_chain(program.stages), program.placement)}
    extra = {}
    recv_f, send_b = ops.get("RECV_F").code, ops.get("SEND_B").code
    for g, c in enumerate(code):
        if c == recv_f:
            instr = instrs[g]
            if (instr.peer_stage, rank_of[g]) not in routes:
                extra.setdefault((instr.peer_stage, rank_of[g]), instr)
    if not extra:
        return tuple(routes[k] for k in sorted(routes))
    grads = {
        (instrs[g].peer_stage, rank_of[g], instrs[g].stage) for g, c in enumerate(code) if c == send_b
    }
    for (p, q), instr in extra.items():
        c = instr.stage
        routes[(p, q)] = Route(
            producer=p, rank=q, consumers=(c,), grad_consumers=(c,) if (p, q, c) in grads else (),
            forward=instr.tensors, backward=(), local=False,
        )
    return tuple(routes[k] for k in sorted(routes))


def to_networkx(pg: ProgramGraph) -> nx.DiGraph:
    """All instructions as nodes (global ids, with rank/instr attributes) and their edges."""
    graph = nx.DiGraph()
    graph.add_nodes_from(
        (g, {"rank": pg.rank_of[g], "instr": str(instr)}) for g, instr in enumerate(pg.instrs)
    )
    ends = pg.offset[1:] + [len(pg.instrs)]
    graph.add_edges_from((g, g + 1) for r, first in enumerate(pg.offset) for g in range(first, ends[r] - 1))
    is_send = ops.Codes.get().is_send
    graph.add_edges_from((g, p) for g, p in enumerate(pg.partner) if p >= 0 and is_send[pg.code[g]])
    graph.add_edges_from(_data_edges(pg))
    return graph


def _data_edges(pg: ProgramGraph):
    idx, cg = pg.compute, pg.compute_gid
    for route in pg.routes:
        p = route.producer
        for mb in range(idx.microbatches):
            fp = cg[idx.forward(p, mb)]
            for c in route.consumers:
                yield fp, cg[idx.forward(c, mb)]
            for c in route.grad_consumers:
                yield cg[idx.backward(c, mb)], cg[idx.backward(p, mb)]
    for stage in range(idx.stages):
        for mb in range(idx.microbatches):
            f, b, w = idx.forward(stage, mb), idx.backward(stage, mb), idx.last_backward(stage, mb)
            if f != b:
                yield cg[f], cg[b]
            if w != b:
                yield cg[b], cg[w]

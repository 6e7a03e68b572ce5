"""Validation of a Program: complete, well ordered, matched and deadlock-free.

Checks, in order, each failing with a one-line ValidationError: instruction fields;
every compute op exactly once, F before its backward, I before W; every send matched by
one receive of the same tensors; every stage data dependency (F->F, B->B, F->B, I->W)
respected, locally by program order and across ranks by a transfer that follows the
producer and precedes the consumer; and no deadlock under blocking (rendezvous)
point-to-point semantics, reported as the cycle of waits (DeadlockError).
"""

from __future__ import annotations

import networkx as nx

from ppc.errors import DeadlockError, ValidationError
from ppc.ir import ops
from ppc.ir.program import Program
from ppc.ir.stage_graph import StageGraph
from ppc.verify.graph import BACKWARD, FORWARD, ProgramGraph, build, collective_name, describe_key
from ppc.verify.order import first_forward_of, last_backward_of

__all__ = ["check", "validate"]


def validate(program: Program, graph: StageGraph | None = None) -> None:
    """Raise ValidationError / DeadlockError if `program` is not safe to run."""
    check(program, graph)


def check(program: Program, graph: StageGraph | None = None) -> ProgramGraph:
    """Validate and return the indexed program (reused by the timeline)."""
    pg = build(program, graph)
    _check_transfers(pg)
    _check_deadlock(pg)
    return pg


def _check_transfers(pg: ProgramGraph) -> None:
    """Each route's transfer follows its producer and precedes its consumers."""
    idx, cg, sends, partner = pg.compute, pg.compute_gid, pg.sends, pg.partner
    p_ = pg.program
    R, S, M = p_.ranks, p_.stages, p_.microbatches
    for route in pg.routes:
        if route.local:
            continue
        p, q = route.producer, route.rank
        r = p_.placement[p]
        producers = [cg[g] for g in idx.forward_column(p)]
        readers = [cg[g] for g in first_forward_of(idx, route.consumers)]
        for mb in range(M):
            key = ((p * M + mb) * R + r) * R + q
            send = sends.get(key, -1)
            if send < producers[mb] or partner[send] > readers[mb]:
                _explain(pg, (FORWARD, p, mb, r, q), producers[mb], readers[mb])
        if not route.grad_consumers:
            continue
        makers = [cg[g] for g in last_backward_of(idx, route.grad_consumers)]
        users = [cg[g] for g in idx.backward_column(p)]
        for mb in range(M):
            key = (((S + p) * M + mb) * R + q) * R + r
            send = sends.get(key, -1)
            if send < makers[mb] or partner[send] > users[mb]:
                _explain(pg, (BACKWARD, p, mb, q, r), makers[mb], users[mb])


def _explain(pg: ProgramGraph, key, producer: int, consumer: int) -> None:
    send = pg.sends.get(pg.key_of(*key))
    if send is None:
        raise ValidationError(
            f"missing transfer: {pg.where(consumer)} needs the {describe_key(key)}, which is never sent"
        )
    if send < producer:
        raise ValidationError(
            f"{pg.where(send)} sends before {pg.instrs[producer]} (position "
            f"{pg.position(producer)}) computes what it sends"
        )
    recv = pg.partner[send]
    raise ValidationError(
        f"{pg.where(consumer)} runs before {pg.instrs[recv]} (position "
        f"{pg.position(recv)}) receives its input"
    )


def _check_deadlock(pg: ProgramGraph) -> None:
    """Run the programs with rendezvous transfers and collectives; report a stall."""
    code, partner, rank_of = pg.code, pg.partner, pg.rank_of
    codes = ops.Codes.get()
    is_comm, is_collective = codes.is_comm, codes.is_collective
    ranks = pg.program.ranks
    n = len(code)
    ptr = list(pg.offset)
    limit = pg.offset[1:] + [n]
    group_of = {g: members for members in pg.groups.values() for g in members}
    stack = list(range(ranks - 1, -1, -1))
    while stack:
        r = stack.pop()
        g, lim = ptr[r], limit[r]
        while g < lim:
            c = code[g]
            if is_comm[c]:
                h = partner[g]
                other = rank_of[h]
                if ptr[other] != h:
                    break
                ptr[other] = h + 1
                stack.append(other)
            elif is_collective[c]:
                members = group_of[g]
                if any(ptr[rank_of[m]] != m for m in members if m != g):
                    break
                for m in members:
                    if m != g:
                        ptr[rank_of[m]] = m + 1
                        stack.append(rank_of[m])
            g += 1
        ptr[r] = g
    stuck = [r for r in range(ranks) if ptr[r] < limit[r]]
    if stuck:
        raise DeadlockError(_describe(pg, ptr, stuck))


def _describe(pg: ProgramGraph, ptr: list[int], stuck: list[int]) -> str:
    waits = nx.DiGraph()
    reason = {}
    for r in stuck:
        g = ptr[r]
        instr = pg.instrs[g]
        if instr.op.category is ops.Category.COLLECTIVE:
            members = pg.groups[collective_name(instr)]
            late = next(m for m in members if ptr[pg.rank_of[m]] != m)
            other = pg.rank_of[late]
            reason[r] = f"rank {r} waits at {instr} for rank {other}"
        else:
            other = pg.rank_of[pg.partner[g]]
            reason[r] = f"rank {r} waits at {_waiting_op(pg, g)} for {_peer_op(pg, g)}"
        waits.add_edge(r, other)
    cycle = nx.find_cycle(waits, source=stuck[0])
    members = [u for u, _ in cycle]
    first = members.index(min(members))
    return "deadlock: " + "; ".join(reason[r] for r in members[first:] + members[:first])


def _waiting_op(pg: ProgramGraph, g: int) -> str:
    """The compute op a stalled receive feeds, else the stalled instruction itself."""
    instr, idx = pg.instrs[g], pg.compute
    if instr.op.is_recv:
        find = idx.forward if instr.op.carries == "activations" else idx.backward
        return idx.name(find(instr.stage, instr.mb))
    return str(instr)


def _peer_op(pg: ProgramGraph, g: int) -> str:
    """What the stalled instruction waits for on the peer, in schedule terms."""
    instr, idx = pg.instrs[g], pg.compute
    if instr.op.is_recv:
        find = idx.forward if instr.op.carries == "activations" else idx.backward
        return idx.name(find(instr.peer_stage, instr.mb))
    h = pg.partner[g]
    return f"rank {pg.rank_of[h]} to reach {pg.instrs[h]}"

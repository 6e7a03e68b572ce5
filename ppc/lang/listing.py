"""Plain renderings of a compute order: the per-rank text listing and the JSON record."""

from __future__ import annotations

from ppc.ir.order import ComputeOrder


def format_listing(order: ComputeOrder) -> str:
    """A header line, then one line per rank: `rank 0 [stages 0, 4]: 0F0 0F1 ...`."""
    head = (
        f"schedule {order.schedule}: {order.ranks} ranks, {order.stages} stages, "
        f"{order.microbatches} microbatches, placement {list(order.placement)}"
    )
    lines = [head]
    for rank, row in enumerate(order.compute):
        stages = ", ".join(str(s) for s in order.stages_of(rank))
        lines.append(f"rank {rank} [stages {stages}]: " + " ".join(str(a) for a in row))
    return "\n".join(lines) + "\n"


def to_json_record(order: ComputeOrder) -> dict:
    """The `--format json` record: sizes, placement and per-rank actions in torch syntax."""
    return {
        "schedule": order.schedule,
        "ranks": order.ranks,
        "stages": order.stages,
        "microbatches": order.microbatches,
        "placement": list(order.placement),
        "compute": [[str(a) for a in row] for row in order.compute],
    }

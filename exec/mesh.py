"""The ranks of a run as a device mesh: D pipeline replicas ("dp") x R pipeline ranks ("pp").

Layout, row-major as `init_device_mesh` numbers a (D, R) mesh:

    global rank = replica * R + pipeline rank

so the R ranks of one pipeline are consecutive (one node when R fits on it: point-to-point
traffic stays on the fast links) and the D copies of one pipeline rank are R apart.

Which group each collective uses:

- pp (the R ranks of this replica): point-to-point peers (`Transport(group=...)` turns a
  program's pipeline rank into a global rank through it), tied-weight groups (subsets of it,
  one per replica: `PipelineMesh.subgroup`), and the global gradient norm. The norm is
  summed over pp, not over the whole mesh: after gradients are reduced across replicas
  every replica holds the same gradient, so the pp sum is the norm of the job's gradient,
  and a sum over the mesh would count it D times. Checkpoints, traces and metrics are
  written by replica 0 alone, through its pp group.
- dp (the D copies of this rank's stages): gradient reduction across replicas (REDUCE_GRAD,
  exec/dp.py), the global batch's loss, and ZeRO-1's optimizer shards. Each replica trains
  on its own shard of the global batch (exec/data.py).

This module is the only one that builds the mesh; the others ask it for groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

__all__ = ["MeshLayout", "PipelineMesh", "build_mesh"]

DIMS = ("dp", "pp")


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshLayout:
    """Rank arithmetic of a D x R mesh (no torch.distributed needed)."""

    dp: int
    """Pipeline replicas D."""
    pp: int
    """Pipeline ranks R."""

    def __post_init__(self) -> None:
        if self.dp < 1 or self.pp < 1:
            raise ValueError(f"mesh sizes must be >= 1, got dp={self.dp} pp={self.pp}")

    @property
    def world(self) -> int:
        return self.dp * self.pp

    def global_rank(self, *, replica: int, rank: int) -> int:
        """The global rank of pipeline rank `rank` in replica `replica`."""
        if not (0 <= replica < self.dp and 0 <= rank < self.pp):
            raise ValueError(f"(replica {replica}, rank {rank}) is outside a {self.dp} x {self.pp} mesh")
        return replica * self.pp + rank

    def coords(self, global_rank: int) -> tuple[int, int]:
        """(replica, pipeline rank) of a global rank."""
        if not 0 <= global_rank < self.world:
            raise ValueError(f"global rank {global_rank} is outside a world of {self.world}")
        return divmod(global_rank, self.pp)

    def pipeline(self, replica: int) -> list[int]:
        """Global ranks of one replica's pipeline, by pipeline rank."""
        return [self.global_rank(replica=replica, rank=r) for r in range(self.pp)]

    def replicas(self, rank: int) -> list[int]:
        """Global ranks holding pipeline rank `rank`, by replica."""
        return [self.global_rank(replica=d, rank=rank) for d in range(self.dp)]


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineMesh:
    """This process's place in the mesh and the process groups it uses."""

    layout: MeshLayout
    device_mesh: object
    """The torch DeviceMesh with dims ("dp", "pp")."""
    replica: int
    rank: int
    """This process's pipeline rank (the rank its program is written for)."""
    pp_group: object
    dp_group: object

    def peer(self, rank: int) -> int:
        """The global rank of pipeline rank `rank` in this replica."""
        return dist.get_global_rank(self.pp_group, rank)

    def subgroup(self, ranks: list[int]):
        """A process group of pipeline ranks `ranks` in this replica (None when this rank is
        not one of them). Collective: every process of the world calls it, in the same order,
        and it creates one group per replica."""
        mine = None
        for replica in range(self.layout.dp):
            members = [self.layout.global_rank(replica=replica, rank=r) for r in sorted(ranks)]
            group = dist.new_group(ranks=members)
            if replica == self.replica and self.rank in ranks:
                mine = group
        return mine


def build_mesh(*, dp: int, pp: int, device_type: str) -> PipelineMesh:
    """The (dp, pp) DeviceMesh over the initialized default group (world must be dp * pp)."""
    from torch.distributed.device_mesh import init_device_mesh

    layout = MeshLayout(dp=dp, pp=pp)
    world = dist.get_world_size()
    if world != layout.world:
        raise ValueError(f"world size {world} != dp {dp} x pp {pp}")
    mesh = init_device_mesh(device_type, (dp, pp), mesh_dim_names=DIMS)
    if mesh.mesh.tolist() != [layout.pipeline(d) for d in range(dp)]:
        raise RuntimeError(f"DeviceMesh laid out ranks as {mesh.mesh.tolist()}, not replica * R + rank")
    replica, rank = layout.coords(dist.get_rank())
    return PipelineMesh(
        layout=layout,
        device_mesh=mesh,
        replica=replica,
        rank=rank,
        pp_group=mesh.get_group("pp"),
        dp_group=mesh.get_group("dp"),
    )

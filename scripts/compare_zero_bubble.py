"""Compare ppc's zero-bubble built-ins with the zero-bubble authors' own generator.

The authors' repository (sail-sg/zero-bubble-pipeline-parallelism) ships two plain-Python
schedulers under megatron/core/pipeline_parallel/zerobubble/scheduler/:

- `zb.py`: the automatic (heuristic) scheduler that orders F, B (input gradient) and W
  (weight gradient) for given costs and a per-stage memory limit; at a limit of R
  activation sets (1F1B's memory) it makes ZB-H1-style orders. ppc's counterpart is
  schedules/zb_h1.ppc. At a limit of 2R sets (ZB-H2's memory) it is compared with
  schedules/zb_h2.ppc (`--family ZB-H2`), which holds at most 2R - 1.
- `zbv.py`: the ZB-V scheduler (two stages per rank, V-shape). ppc's counterpart is
  schedules/zbv.ppc.

For every grid point (R, M, costs) this runs their generator, converts its per-stage node
lists to ppc actions (their F/B/W of a layer group are ppc's `{stage}F{mb}`,
`{stage}I{mb}`, `{stage}W{mb}`), writes them as a torch compute-only CSV and times that
CSV with ppc's simulator, exactly as `ppc simulate their.csv --costs ...` does; ppc's
built-in is expanded and timed with the same costs. Both orders are therefore timed by
one simulator; the authors' own estimate of their makespan is printed beside it.

    .venv/bin/python scripts/compare_zero_bubble.py --repo /tmp/zb [--ranks 2-8]
        [--out docs-table.md] [--csv-dir DIR] [--json]

`--repo` is a work tree of the authors' repository (e.g. from a git dir:
`git --git-dir=REPO.git archive HEAD | tar -x -C /tmp/zb`). Only their scheduler modules
are imported (Megatron's package __init__ files are bypassed); their `zb.py` imports
torch (for a type hint) and pulp (read only on its removed ILP path), so pulp is stubbed
when it is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
import tempfile
import types
from dataclasses import asdict, dataclass
from pathlib import Path

SCHEDULER_PACKAGE = "megatron.core.pipeline_parallel.zerobubble.scheduler"


@dataclass(frozen=True, kw_only=True)
class CostSetting:
    """One cost setting, in ppc's terms (their B is ppc's I)."""

    label: str
    F: float
    I: float
    W: float
    comm: float
    """Transfer latency between adjacent stages (their cost_comm, ppc's `latency`)."""

    def inline(self) -> str:
        """ppc's `--costs` spelling."""
        return f"F={self.F:g},I={self.I:g},W={self.W:g},latency={self.comm:g}"


SETTINGS = (
    CostSetting(label="F=I=W=1, comm 0", F=1, I=1, W=1, comm=0),
    CostSetting(label="F=I=W=1, comm 0.1", F=1, I=1, W=1, comm=0.1),
    CostSetting(label="F=1, I=2, W=1 (B=3)", F=1, I=2, W=1, comm=0),
    CostSetting(label="F=1, I=1.5, W=0.5 (B=2)", F=1, I=1.5, W=0.5, comm=0),
)


@dataclass(frozen=True, kw_only=True)
class Row:
    """One grid point: their order and ppc's built-in, both timed by ppc's simulator."""

    family: str
    """"ZB-H1" (their zb.py at 1F1B memory vs zb_h1), "ZB-H2" (their zb.py at 2R sets vs zb_h2)
    or "ZB-V" (their zbv.py vs zbv)."""
    ppc_schedule: str
    costs: str
    ranks: int
    microbatches: int
    same_order: bool
    ranks_differing: int
    their_own_makespan: float
    """Their generator's own timing of its order."""
    their_makespan: float
    """Their order, timed by ppc's simulator (its step ends with STEP, a global sync that
    costs one latency)."""
    their_compute_end: float
    """When ppc's simulator ends their last compute op: their own timing's counterpart."""
    ppc_makespan: float
    their_bubble: float
    ppc_bubble: float
    their_peak: int
    """Most activation sets (stage, microbatch between F and W) any rank holds."""
    ppc_peak: int
    memory_limit: int
    """The limit their generator was given, in the same sets."""

    @property
    def gap(self) -> float:
        """ppc's makespan over theirs, minus one (positive: ppc is slower)."""
        return self.ppc_makespan / self.their_makespan - 1.0


# ----------------------------------------------------------------------------- their generator


def load_generator(repo: str | Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """Import their `graph`, `zb` and `zbv` modules from a work tree of their repository,
    without running Megatron's package __init__ files (which need a GPU stack)."""
    repo = Path(repo)
    parts = SCHEDULER_PACKAGE.split(".")
    folder = repo.joinpath(*parts)
    if not (folder / "zb.py").is_file() or not (folder / "zbv.py").is_file():
        raise SystemExit(f"--repo {repo}: no {'/'.join(parts)}/zb.py and zbv.py there")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        package = sys.modules.get(name)
        if package is None or not hasattr(package, "__path__"):
            package = types.ModuleType(name)
            sys.modules[name] = package
        package.__path__ = [str(repo.joinpath(*parts[:depth]))]
    try:
        import pulp  # noqa: F401
    except ImportError:  # their heuristic path calls only pulp.value on plain numbers
        stub = types.ModuleType("pulp")
        stub.value = lambda x: x
        sys.modules["pulp"] = stub
    modules = tuple(importlib.import_module(f"{SCHEDULER_PACKAGE}.{m}") for m in ("graph", "zb", "zbv"))
    return modules  # type: ignore[return-value]


_LETTER = {"F": "F", "B": "I", "W": "W"}
"""Their node type -> ppc's action letter."""


def to_rows(local_order) -> list[list[str]]:
    """Their per-stage ScheduledNode lists -> per-rank ppc action strings."""
    return [[f"{n.layer_group_idx}{_LETTER[n.type.value]}{n.microbatch}" for n in nodes] for nodes in local_order]


def their_zb_h1(gen, ranks: int, microbatches: int, c: CostSetting, *,
                memory: int | None = None) -> tuple[list[list[str]], float]:
    """Their automatic scheduler at 1F1B's memory: F holds a set, W frees it, R sets (or
    `memory` sets)."""
    graph_mod, zb, _ = gen
    config = graph_mod.GraphConfig(
        cost_f=[float(c.F)] * ranks, cost_b=[float(c.I)] * ranks, cost_w=[float(c.W)] * ranks,
        cost_comm=float(c.comm), mem_f=[1] * ranks, mem_b=[0] * ranks, mem_w=[-1] * ranks,
        max_mem=[memory or ranks] * ranks, n_stages=ranks, n_micro=microbatches,
    )
    graph = zb.Graph.build_graph(ranks, microbatches, config)
    _, _, completion = zb.initial_solution(graph, print_result=False)
    return to_rows(zb.create_scheduled_nodes(graph, completion)), float(max(completion))


def their_zb_h2(gen, ranks: int, microbatches: int, c: CostSetting) -> tuple[list[list[str]], float]:
    """Their automatic scheduler at ZB-H2's memory: 2R sets."""
    return their_zb_h1(gen, ranks, microbatches, c, memory=2 * ranks)


def their_zbv(gen, ranks: int, microbatches: int, c: CostSetting) -> tuple[list[list[str]], float]:
    """Their ZB-V scheduler at its default memory (2R half-size sets, 1F1B's memory)."""
    graph_mod, _, zbv = gen
    config = graph_mod.GraphConfig(
        cost_f=[float(c.F)] * ranks, cost_b=[float(c.I)] * ranks, cost_w=[float(c.W)] * ranks,
        cost_comm=float(c.comm), mem_f=[1] * ranks, mem_b=[0] * ranks, mem_w=[-1] * ranks,
        max_mem=None, max_chunks=2, n_stages=ranks, n_micro=microbatches,
    )
    pp = zbv.PipelineGraph(ranks, microbatches, c.F, c.I, c.W, c.comm, f_mem=1, b_mem=0, w_mem=-1)
    tried = []  # every (schedule, end_time) it tries, to read the chosen one's own timing
    plain = pp.try_v_schedule

    def recording(*args, **kwargs):
        result = plain(*args, **kwargs)
        tried.append(result)
        return result

    pp.try_v_schedule = recording
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a summary line
        local_order = pp.create_schedule(config)
    chosen = [[(n.type.value, n.microbatch) for n in nodes] for nodes in local_order]
    own = None
    for schedule, end_time, _ in tried:
        if [[("FBW"[cat], mb) for cat, _, mb in row] for row in schedule] == chosen:
            own = float(max(end_time))
            break
    return to_rows(local_order), own if own is not None else float("nan")


# ----------------------------------------------------------------------------- ppc


def ppc_time(order, c: CostSetting):
    """Lower, validate and time an order as `ppc simulate` does."""
    from ppc.costs import CostModel
    from ppc.predict import simulate_order

    return simulate_order(order, CostModel.parse_inline(c.inline(), order.stages))


def compute_end(timeline) -> float:
    """End of the last compute op (the step's optimizer sync left out)."""
    program = timeline.program
    return max(
        timeline.end[timeline.offset[r] + i]
        for r, row in enumerate(program.instructions) for i, ins in enumerate(row) if ins.op.is_compute
    )


def csv_order(rows: list[list[str]], path: Path):
    """Write their order as a torch compute-only CSV and read it back through ppc's reader."""
    from ppc.lang import load_schedule

    path.write_text("".join(",".join(row) + "\n" for row in rows))
    return load_schedule(str(path)).expand(ranks=len(rows), microbatches=None, virtual=None, placement=None)


def compare_one(gen, family: str, ranks: int, microbatches: int, c: CostSetting, csv_dir: Path) -> Row:
    """One grid point of one family."""
    from ppc.lang import load_schedule

    if family == "ZB-H1":
        rows, own = their_zb_h1(gen, ranks, microbatches, c)
        builtin, virtual, limit = "zb_h1", 1, ranks
    elif family == "ZB-H2":
        rows, own = their_zb_h2(gen, ranks, microbatches, c)
        builtin, virtual, limit = "zb_h2", 1, 2 * ranks
    else:
        rows, own = their_zbv(gen, ranks, microbatches, c)
        builtin, virtual, limit = "zbv", 2, 2 * ranks
    safe = c.label.translate(str.maketrans({" ": "", ",": "_", "=": "", "(": "", ")": "", ".": "p"}))
    theirs = csv_order(rows, csv_dir / f"{family}_r{ranks}_m{microbatches}_{safe}.csv")
    ours = load_schedule(builtin).expand(ranks=ranks, microbatches=microbatches, virtual=virtual, placement=None)
    ppc_rows = [[str(a) for a in row] for row in ours.compute]
    differing = sum(a != b for a, b in zip(rows, ppc_rows, strict=True))
    t_theirs, t_ours = ppc_time(theirs, c), ppc_time(ours, c)
    return Row(
        family=family, ppc_schedule=builtin, costs=c.label, ranks=ranks, microbatches=microbatches,
        same_order=differing == 0, ranks_differing=differing,
        their_own_makespan=own, their_makespan=t_theirs.makespan,
        their_compute_end=compute_end(t_theirs), ppc_makespan=t_ours.makespan,
        their_bubble=t_theirs.bubble, ppc_bubble=t_ours.bubble,
        their_peak=max(s.peak_activations for s in t_theirs.per_rank),
        ppc_peak=max(s.peak_activations for s in t_ours.per_rank),
        memory_limit=limit,
    )


def compare(repo: str | Path, *, ranks: range = range(2, 9), settings=SETTINGS,
            families=("ZB-H1", "ZB-V"), csv_dir: str | Path | None = None) -> list[Row]:
    """The whole grid: R in `ranks`, M in R, 2R, 3R, every cost setting and family."""
    gen = load_generator(repo)
    with contextlib.ExitStack() as stack:
        folder = Path(csv_dir) if csv_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        return [
            compare_one(gen, family, r, m, c, folder)
            for family in families for c in settings for r in ranks for m in (r, 2 * r, 3 * r)
        ]


# ----------------------------------------------------------------------------- output


def table(rows: list[Row]) -> str:
    """Markdown: one line per grid point."""
    head = ("| family | costs | R | M | same order | their makespan (own / ppc sim) | ppc makespan | gap "
            "| bubble theirs / ppc | peak sets theirs / ppc (limit) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        same = "yes" if r.same_order else f"no ({r.ranks_differing}/{r.ranks} ranks)"
        lines.append(
            f"| {r.family} vs {r.ppc_schedule} | {r.costs} | {r.ranks} | {r.microbatches} | {same} "
            f"| {r.their_own_makespan:g} / {r.their_makespan:g} | {r.ppc_makespan:g} | {100 * r.gap:+.1f}% "
            f"| {r.their_bubble:.3f} / {r.ppc_bubble:.3f} | {r.their_peak} / {r.ppc_peak} ({r.memory_limit}) |"
        )
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """Markdown: per family and cost setting, how often ppc matches, wins or loses."""
    lines = [
        ("| family | costs | points | same order | ppc slower | ppc faster | worst gap "
         "| their timing = ppc's | ppc peak over theirs |"),
        "|" + "---|" * 9,
    ]
    keys = list(dict.fromkeys((r.family, r.ppc_schedule, r.costs) for r in rows))
    for family, builtin, costs in keys:
        group = [r for r in rows if (r.family, r.costs) == (family, costs)]
        slower = [r for r in group if r.gap > 1e-9]
        faster = [r for r in group if r.gap < -1e-9]
        worst = max(group, key=lambda r: r.gap)
        agree = sum(abs(r.their_compute_end - r.their_own_makespan) < 1e-6 for r in group)
        more_memory = sum(r.ppc_peak > r.their_peak for r in group)
        lines.append(
            f"| {family} vs {builtin} | {costs} | {len(group)} | {sum(r.same_order for r in group)} "
            f"| {len(slower)} | {len(faster)} | {100 * worst.gap:+.1f}% (R={worst.ranks}, M={worst.microbatches}) "
            f"| {agree} | {more_memory} |"
        )
    return "\n".join(lines)


def parse_ranks(text: str) -> range:
    """`2-8` or `4`."""
    low, _, high = text.partition("-")
    return range(int(low), int(high or low) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="work tree of sail-sg/zero-bubble-pipeline-parallelism")
    parser.add_argument("--ranks", type=parse_ranks, default=range(2, 9), help="R range, e.g. 2-8 (default)")
    parser.add_argument("--family", choices=("ZB-H1", "ZB-H2", "ZB-V"), action="append",
                        help="default: ZB-H1 and ZB-V")
    parser.add_argument("--csv-dir", help="keep their orders here as torch CSVs (for `ppc simulate FILE.csv`)")
    parser.add_argument("--out", help="also write the tables (markdown) to this file")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = compare(args.repo, ranks=args.ranks, families=tuple(args.family or ("ZB-H1", "ZB-V")),
                   csv_dir=args.csv_dir)
    if args.json:
        print(json.dumps([asdict(r) | {"gap": r.gap} for r in rows], indent=1))
        return 0
    text = f"{summary(rows)}\n\n{table(rows)}\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

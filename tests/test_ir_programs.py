"""Programs are files: JSON round trips of Program and StageGraph, golden listings of
lowered programs (a change in lowering shows as a diff), and `ppc simulate FILE.json`.

Regenerate the listings with PPC_REGEN_GOLDEN=1 after a deliberate change, and review
the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ppc

from ppc.compiler import compile_program
from ppc.ir.program import Program, TensorSpec, format_program
from ppc.ir.stage_graph import StageGraph, StageValue, TiedWeight, synthetic_chain
from ppc.lang import load_schedule

GOLDEN = Path(__file__).parent / "golden" / "programs"
CASES = [("1f1b", 4, 8, 1), ("interleaved_1f1b", 2, 4, 2), ("zb_h1", 3, 4, 1), ("zbv", 2, 4, 2),
         ("gpipe", 2, 3, 1), ("dualpipev", 2, 5, 2)]


def _graph_with_skip_and_tied() -> StageGraph:
    spec = TensorSpec(name="h", shape=(2, 8, 16), dtype="float32", bytes=1024)
    return StageGraph(
        num_stages=4,
        values=(
            StageValue(name="h0", producer=0, consumers=(1,), spec=spec),
            StageValue(name="h1", producer=1, consumers=(2, 3), spec=spec),
            StageValue(name="mask", producer=0, consumers=(3,), spec=spec, requires_grad=False),
            StageValue(name="h2", producer=2, consumers=(3,), spec=spec),
        ),
        tied=(TiedWeight(name="embed.weight", stages=(0, 3),
                         spec=TensorSpec(name="embed.weight", shape=(8, 4), dtype="float32", bytes=128)),),
        activation_bytes=(10, 20, 30, 40),
    )


@pytest.mark.parametrize(("name", "ranks", "microbatches", "virtual"), CASES)
def test_lowered_program_matches_golden(name, ranks, microbatches, virtual) -> None:
    order = load_schedule(name).expand(ranks=ranks, microbatches=microbatches, virtual=virtual)
    listing = format_program(compile_program(order))
    path = GOLDEN / f"{name}_r{ranks}_m{microbatches}_v{virtual}.txt"
    if os.environ.get("PPC_REGEN_GOLDEN"):
        path.write_text(listing)
    assert listing == path.read_text()


@pytest.mark.parametrize("graph", [None, "skip_and_tied"])
def test_program_and_graph_round_trip_through_json(graph) -> None:
    graph = _graph_with_skip_and_tied() if graph else synthetic_chain(4)
    order = load_schedule("zb_h1").expand(ranks=4, microbatches=6)
    program = compile_program(order, graph)
    text = json.dumps({"program": program.to_json(), "graph": graph.to_json()})
    data = json.loads(text)
    assert Program.from_json(data["program"]) == program
    assert StageGraph.from_json(data["graph"]) == graph
    assert any(i.op.name == "REDUCE_TIED" for row in program.instructions for i in row) == bool(graph.tied)


def test_simulate_reads_a_compiled_program(tmp_path: Path) -> None:
    compiled = ppc("compile", "interleaved_1f1b", "-r", "4", "-m", "8", "--virtual", "2", "--format", "json")
    assert compiled.returncode == 0, compiled.stderr
    path = tmp_path / "program.json"
    path.write_text(compiled.stdout)
    from_file = ppc("simulate", str(path), "--json")
    from_schedule = ppc("simulate", "interleaved_1f1b", "-r", "4", "-m", "8", "--virtual", "2", "--json")
    assert from_file.returncode == 0, from_file.stderr
    a, b = json.loads(from_file.stdout), json.loads(from_schedule.stdout)
    assert a["makespan"] == b["makespan"] and a["bubble"] == b["bubble"]


def test_a_broken_program_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    compiled = ppc("compile", "1f1b", "-r", "2", "-m", "2", "--format", "json")
    data = json.loads(compiled.stdout)
    data["program"]["instructions"][1] = data["program"]["instructions"][1][1:]  # drop rank 1's first op
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    result = ppc("simulate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: d["program"]["instructions"][0][1].update(peer="x"), "malformed program record"),
    (lambda d: d["program"].update(instructions="x"), "malformed program record"),
    (lambda d: d["program"]["instructions"][0][0].update(parts=[{"op": "F", "stage": 0, "mb": 0}]),
     "rank 0 position 0: F has no parts"),
    (lambda d: d.update(graph={**d["graph"], "num_stages": 3}), "the stage graph has 3 stages, the program 2"),
])
def test_program_records_are_checked_beyond_their_json_types(tmp_path: Path, edit, needle) -> None:
    """Found by the fuzzer's program family (scripts/fuzz.py): each was a traceback or a
    silently accepted file."""
    from ppc.errors import ValidationError
    from ppc.ir.program import program_file

    data = json.loads(ppc("compile", "1f1b", "-r", "2", "-m", "2", "--format", "json").stdout)
    edit(data)
    with pytest.raises(ValidationError, match=needle):
        program_file(data, "p.json")

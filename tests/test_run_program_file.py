"""`ppc run --schedule program.json`: a compiled (and hand-edited) program runs exactly as
written, once checked against the model; what does not fit is one line before any worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ppc, refused

RUN = ["run", "--model", "tiny-llama", "-r", "2", "-m", "4", "--seq-len", "16", "--steps", "2",
       "--warmup", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """1f1b for tiny-llama on 2 ranks, 4 microbatches of 16 tokens, as `ppc compile` writes it."""
    done = ppc("compile", "1f1b", "-r", "2", "-m", "4", "--model", "tiny-llama", "--seq-len", "16",
               "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _write(tmp_path: Path, record: dict, name: str = "p.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return str(path)


def _edited(record: dict, rank: int, reorder) -> dict:
    edited = json.loads(json.dumps(record))
    edited["program"]["instructions"][rank] = reorder(edited["program"]["instructions"][rank])
    return edited


def _receives_first(row: list[dict]) -> list[dict]:
    return [i for i in row if i["op"].startswith("RECV")] + [i for i in row if not i["op"].startswith("RECV")]


def _first_send_later(row: list[dict]) -> list[dict]:
    """Rank 0's first activation leaves after its second forward, not before it."""
    row = list(row)
    k = next(k for k, i in enumerate(row) if i["op"] == "SEND_F")
    row[k], row[k + 1] = row[k + 1], row[k]
    return row


def test_a_program_for_another_sequence_length_is_refused(compiled, tmp_path, capsys, no_launch):
    path = _write(tmp_path, compiled)
    line = refused(["run", "--schedule", path, "-r", "2", "-m", "4", "--seq-len", "32", "--steps", "2"], capsys)
    assert line == (f"ppc: {path} was compiled for another model or shape: input_ids is [1, 16] int64 there, "
                    "[1, 32] int64 in this run (compile it with this run's --model, --seq-len, "
                    "--microbatch-size and --split)")


@pytest.mark.parametrize(("flags", "needle"), [(["-r", "4"], "is compiled for --ranks 2, this run has 4"),
                                               (["-m", "8"], "is compiled for --microbatches 4, this run has 8")])
def test_other_ranks_or_microbatches_are_refused(compiled, tmp_path, capsys, no_launch, flags, needle):
    args = [*RUN, "--schedule", _write(tmp_path, compiled)]
    for flag, value in zip(flags[::2], flags[1::2]):
        args[args.index(flag) + 1] = value
    assert needle in refused(args, capsys)


def test_a_program_without_its_stage_graph_is_refused(compiled, tmp_path, capsys, no_launch):
    record = {key: value for key, value in compiled.items() if key != "graph"}
    assert "holds no stage graph: compile it with --model" in refused(
        [*RUN, "--schedule", _write(tmp_path, record)], capsys)


def test_a_dropped_backward_is_refused(compiled, tmp_path, capsys, no_launch):
    edited = json.loads(json.dumps(compiled))
    row = edited["program"]["instructions"][1]
    row.remove(next(i for i in row if i["op"] == "B" and i["mb"] == 2))
    line = refused([*RUN, "--schedule", _write(tmp_path, edited)], capsys)
    assert "1B2" in line and "Traceback" not in line


def test_an_extra_send_is_refused(compiled, tmp_path, capsys, no_launch):
    edited = json.loads(json.dumps(compiled))
    row = edited["program"]["instructions"][0]
    row.append(next(i for i in row if i["op"] == "SEND_F"))
    line = refused([*RUN, "--schedule", _write(tmp_path, edited)], capsys)
    assert line.startswith("ppc: ") and "rank 0 has 0SEND_F" in line and "to rank 1" in line


def test_an_edit_that_deadlocks_is_refused(compiled, tmp_path, capsys, no_launch):
    """Receives wait for their message: all of rank 1's up front wait for a forward that
    waits for rank 1's first backward."""
    line = refused([*RUN, "--schedule", _write(tmp_path, _edited(compiled, 1, _receives_first))], capsys)
    assert line.startswith("ppc: deadlock: rank 0 waits at 0B0 for 1B0; rank 1 waits at")


@pytest.mark.slow
def test_an_edited_program_trains_as_the_schedule_it_came_from(compiled, tmp_path):
    """Rank 0 sends its first activation one forward later: another program, the same
    computation, the same losses."""
    edited = _edited(compiled, 0, _first_send_later)
    assert [i["op"] for i in edited["program"]["instructions"][0][:3]] == ["F", "F", "SEND_F"]
    losses = {}
    for name, schedule in (("edited", _write(tmp_path, edited, "edited.json")), ("schedule", "1f1b")):
        metrics = tmp_path / f"{name}.jsonl"
        done = ppc(*RUN, "--schedule", schedule, "--metrics", str(metrics))
        assert done.returncode == 0, done.stderr[-2000:]
        losses[name] = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
    assert len(losses["edited"]) == 2 and losses["edited"] == losses["schedule"]

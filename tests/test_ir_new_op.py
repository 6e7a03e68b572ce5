"""A new op kind is a table row, a runtime handler and a cost rule: a toy op registered
from a plugin module compiles, verifies, simulates and runs, with no other module edited."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import ppc

from ppc.costs import CostModel
from ppc.errors import ValidationError
from ppc.ir import ops

PLUGIN = textwrap.dedent('''
    """A toy op: NOTE(s, m) records that (stage s, microbatch m) finished its forward."""
    import os

    from ppc.ir import ops
    from ppc.ir.ops import Category, OpKind

    NOTE = ops.register(OpKind(
        name="NOTE", doc="Record that (stage, mb)'s forward finished.",
        pairing="at most once per (stage, mb), after its forward", category=Category.COMPUTE,
        statement=True, cost=lambda costs, stage: 0.5 * costs.forward[stage], needs=("forward",),
        colour="#222222"))

    if os.environ.get("TOY_LOG"):  # only ranks of a run need the handler (it imports torch)
        from ppc.exec.runtime import handles

        @handles("NOTE")
        def note(runtime, ins):
            with open(os.environ["TOY_LOG"], "a") as log:
                log.write(f"{runtime.rank} {ins}\\n")
''')

SCHEDULE = textwrap.dedent('''
    """1F1B with a NOTE after every forward."""
    schedule noted_1f1b

    placement loop

    per rank r {
      let s = stage(r, 0)
      let warmup = min(R - r - 1, M)
      for m in 0 .. warmup { F(s, m)  NOTE(s, m) }
      for m in 0 .. M - warmup {
        F(s, warmup + m)
        NOTE(s, warmup + m)
        B(s, m)
      }
      for m in M - warmup .. M { B(s, m) }
    }
''')


@pytest.fixture
def plugin(tmp_path: Path):
    (tmp_path / "toy_note_op.py").write_text(PLUGIN)
    (tmp_path / "noted.ppc").write_text(SCHEDULE)
    env = {"PYTHONPATH": str(tmp_path), "PPC_PLUGINS": "toy_note_op"}
    return tmp_path, env


@pytest.fixture
def registered():
    kind = ops.register(ops.OpKind(
        name="NOTE", doc="toy", pairing="toy", category=ops.Category.COMPUTE, statement=True,
        cost=lambda costs, stage: 0.5 * costs.forward[stage], needs=("forward",)))
    yield kind
    ops.unregister("NOTE")


def test_registered_op_joins_language_verifier_lowering_and_timeline(registered, tmp_path: Path):
    from ppc.sim.timeline import simulate

    from ppc.compiler import compile_program
    from ppc.lang import load_schedule

    path = tmp_path / "noted.ppc"
    path.write_text(SCHEDULE)
    order = load_schedule(str(path)).expand(ranks=4, microbatches=8)
    assert sum(a.kind is registered for row in order.compute for a in row) == 4 * 8
    program = compile_program(order)
    timeline = simulate(program, CostModel.uniform(4, F=2.0))
    plain = simulate(compile_program(load_schedule("1f1b").expand(ranks=4, microbatches=8)),
                     CostModel.uniform(4, F=2.0))
    # each NOTE costs half a forward (1.0): busy time grows by exactly M per rank
    assert [s.busy for s in timeline.per_rank] == [p.busy + 8 for p in plain.per_rank]
    assert timeline.peak_activations == plain.peak_activations  # no memory effect


def test_registered_op_is_checked_like_every_other(registered, tmp_path: Path):
    from ppc.lang import load_schedule

    path = tmp_path / "early.ppc"
    path.write_text(SCHEDULE.replace("for m in 0 .. warmup { F(s, m)  NOTE(s, m) }",
                                     "for m in 0 .. warmup { NOTE(s, m)  F(s, m) }"))
    with pytest.raises(ValidationError, match=r"rank 0 position 0: 0NOTE0 comes before 0F0 \(at line 10\), which it needs"):
        load_schedule(str(path)).expand(ranks=4, microbatches=8)


def test_unregistered_op_is_a_positioned_parse_error(tmp_path: Path):
    from ppc.errors import ScheduleError
    from ppc.lang import load_schedule

    path = tmp_path / "noted.ppc"
    path.write_text(SCHEDULE)
    with pytest.raises(ScheduleError) as caught:
        load_schedule(str(path)).expand(ranks=2, microbatches=2)
    assert caught.value.pos is not None and (caught.value.pos.line, caught.value.pos.col) == (10, 35)


def test_plugin_op_compiles_and_simulates_from_the_command_line(plugin, registered):
    from ppc.sim.timeline import simulate

    from ppc.compiler import compile_program
    from ppc.lang import load_schedule

    tmp_path, env = plugin
    run = ppc("simulate", str(tmp_path / "noted.ppc"), "-r", "2", "-m", "4", "--json", env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    in_process = simulate(compile_program(load_schedule(str(tmp_path / "noted.ppc")).expand(
        ranks=2, microbatches=4)), CostModel.uniform(2))
    plain = simulate(compile_program(load_schedule("1f1b").expand(ranks=2, microbatches=4)),
                     CostModel.uniform(2))
    assert report["makespan"] == in_process.makespan > plain.makespan


@pytest.mark.slow
def test_plugin_op_runs_on_two_ranks_equal_to_the_reference(plugin):
    tmp_path, env = plugin
    env["TOY_LOG"] = str(tmp_path / "notes.log")
    common = ["run", "--model", "tiny-llama", "--schedule", str(tmp_path / "noted.ppc"), "--ranks", "2",
              "--microbatches", "4", "--microbatch-size", "1", "--seq-len", "16", "--steps", "2",
              "--device", "cpu", "--quiet"]
    runs = {}
    for name, extra in (("pipe", ["--nproc-per-node", "2"]), ("ref", ["--reference"])):
        metrics = tmp_path / f"{name}.jsonl"
        done = ppc(*common, *extra, "--metrics", str(metrics), env=env, timeout=400)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
    assert runs["pipe"] == pytest.approx(runs["ref"], rel=1e-4)
    notes = (tmp_path / "notes.log").read_text().split()
    assert len(notes) == 2 * 2 * 4 * 2  # two steps, 2 stages x 4 microbatches, "rank op" pairs

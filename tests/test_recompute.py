"""Recompute as an op (RF): a (stage, microbatch) drops its activations after its forward
and runs the forward again before its backward. The language writes it, the verifier
places it, the simulator charges a forward and frees the memory in between, and the
runtime gives exactly the gradients of a run that keeps the activations (dropout
included)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import torch
from ppc.exec.runtime import RankRuntime
from ppc.sim.memory import order_memory
from ppc.sim.timeline import simulate
from torch import nn
from toy_model import ToyLM, ToyStage, toy_split

from ppc.compiler import compile_program
from ppc.compiler.lower import lower
from ppc.costs import CostModel
from ppc.errors import ValidationError
from ppc.ir.ops import Op
from ppc.ir.program import Instruction, Program
from ppc.lang import load_schedule
from ppc.lang.csv_format import parse_csv, write_csv

GPIPE_ALL = textwrap.dedent('''
    """GPipe, every pair recomputed; with split = 1 the backward is I, then all W."""
    schedule rc_gpipe
    param split = 1
    placement loop
    per rank r {
      let s = stage(r, 0)
      for m in 0 .. M { F(s, m) }
      for m in 0 .. M {
        RF(s)
        if split { I(s, m) } else { B(s, m) }
      }
      if split { for m in 0 .. M { W(s, m) } }
    }
''')


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _order(tmp_path: Path, text: str, *, ranks: int, microbatches: int, params: dict | None = None):
    return load_schedule(_write(tmp_path, "s.ppc", text)).expand(
        ranks=ranks, microbatches=microbatches, params=params or {})


def _recompute_1f1b(*, ranks: int = 4, microbatches: int = 8, every: int = 2):
    """The built-in 1f1b_recompute: microbatches m with m % every == 0 are recomputed."""
    return load_schedule("1f1b_recompute").expand(ranks=ranks, microbatches=microbatches,
                                                  params={"every": every})


# ----- language, listings, CSV --------------------------------------------------------


def test_statement_expands_and_prints_in_the_action_syntax():
    order = _recompute_1f1b()
    assert [str(a) for a in order.compute[3][:4]] == ["3F0", "3RF0", "3B0", "3F1"]
    assert sum(a.kind is Op.RF for row in order.compute for a in row) == 4 * 4
    csv = write_csv(order)
    assert "0RF0" in csv.splitlines()[0]
    assert parse_csv(csv).compute == order.compute
    assert str(Instruction.parse("2RF0")) == "2RF0" and Instruction.parse("2RF0").op is Op.RF


def test_implicit_microbatch_counts_recomputes(tmp_path):
    order = _order(tmp_path, GPIPE_ALL, ranks=2, microbatches=3)
    assert [str(a) for a in order.compute[0]] == [
        "0F0", "0F1", "0F2", "0RF0", "0I0", "0RF1", "0I1", "0RF2", "0I2", "0W0", "0W1", "0W2"]


def test_program_json_round_trip():
    program = compile_program(_recompute_1f1b())
    again = Program.from_json(program.to_json())
    assert again.instructions == program.instructions


# ----- verifier ---------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    ("F(s, 0) B(s, 0) RF(s, 0)",
     r"rank 0 position 2: 0RF0 comes after 0B0 \(at line 6\), which it must precede"),
    ("F(s, 0) I(s, 0) RF(s, 0) W(s, 0)",
     r"rank 0 position 2: 0RF0 comes after 0I0 \(at line 6\), which it must precede"),
    ("RF(s, 0) F(s, 0) B(s, 0)",
     r"rank 0 position 0: 0RF0 comes before 0F0 \(at line 6\), which it needs"),
    ("F(s, 0) RF(s, 0) RF(s, 0) B(s, 0)",
     r"rank 0 position 2: 0RF0 runs twice \(first at line 6\)"),
])
def test_recompute_runs_once_between_forward_and_backward(tmp_path, body, message):
    text = f'schedule bad\nplacement loop\nper rank r {{\n  let s = stage(r, 0)\n\n  {body}\n}}\n'
    with pytest.raises(ValidationError, match=message):
        _order(tmp_path, text, ranks=1, microbatches=1)


def test_program_with_a_late_recompute_is_refused():
    from ppc.verify.program import validate

    program = Program(
        schedule="late", ranks=1, stages=1, microbatches=1, placement=(0,),
        instructions=((Instruction.parse("0F0"), Instruction.parse("0B0"), Instruction.parse("0RF0"),
                       Instruction(op=Op.STEP, stage=0, mb=0)),))
    with pytest.raises(ValidationError, match=r"0RF0 comes after 0B0 .*which it must precede"):
        validate(program)


# ----- simulator: cost and memory -----------------------------------------------------


def test_recompute_costs_a_forward():
    costs = CostModel.uniform(4, F=1.5, I=1.0, W=1.0)
    order = _recompute_1f1b()
    timeline = simulate(compile_program(order), costs)
    plain = simulate(compile_program(load_schedule("1f1b").expand(ranks=4, microbatches=8)), costs)
    # 4 of 8 microbatches recomputed on every rank: 4 more forwards of 1.5 each
    assert [s.busy for s in timeline.per_rank] == [p.busy + 4 * 1.5 for p in plain.per_rank]
    assert timeline.makespan > plain.makespan


@pytest.mark.parametrize(("ranks", "microbatches"), [(4, 8), (2, 5), (8, 16)])
def test_every_pair_recomputed_holds_one_set_per_rank(tmp_path, ranks, microbatches):
    costs = CostModel.uniform(ranks)
    full = _recompute_1f1b(ranks=ranks, microbatches=microbatches, every=1)
    plain = load_schedule("1f1b").expand(ranks=ranks, microbatches=microbatches)
    assert [m.peak_activations for m in order_memory(plain, costs)] == [
        min(ranks - r, microbatches) for r in range(ranks)]
    # each F holds its set only until it ends; RF holds it again until its B: one at a time
    assert [m.peak_activations for m in order_memory(full, costs)] == [1] * ranks
    timeline = simulate(compile_program(full), costs)
    assert [s.peak_activations for s in timeline.per_rank] == [1] * ranks
    gpipe = load_schedule("gpipe").expand(ranks=ranks, microbatches=microbatches)
    assert [m.peak_activations for m in order_memory(gpipe, costs)] == [microbatches] * ranks
    gpipe_rc = _order(tmp_path, GPIPE_ALL, ranks=ranks, microbatches=microbatches, params={"split": 0})
    assert [m.peak_activations for m in order_memory(gpipe_rc, costs)] == [1] * ranks
    # I keeps what W needs, so a split GPipe still piles up the W sets (units), not the F sets
    gpipe_split = _order(tmp_path, GPIPE_ALL, ranks=ranks, microbatches=microbatches)
    assert [m.peak_activations for m in order_memory(gpipe_split, costs)] == [microbatches] * ranks


def test_recompute_memory_in_bytes(tmp_path):
    # 100 bytes per set on every stage; W still needs 30% after I
    costs = dataclasses.replace(CostModel.uniform(2), activation_bytes=(100, 100), weight_share=0.3)
    gpipe_rc = _order(tmp_path, GPIPE_ALL, ranks=2, microbatches=4)
    order = load_schedule("gpipe").expand(ranks=2, microbatches=4)
    assert [m.peak_bytes for m in order_memory(order, costs)] == [400, 400]
    # F: 100 then dropped; RF0 100, I0 -> 30, ..., RF3 on top of three W shares: 3 * 30 + 100
    assert [m.peak_bytes for m in order_memory(gpipe_rc, costs)] == [190, 190]


def test_every_other_recompute_lowers_the_peak():
    costs = CostModel.uniform(4)
    half = order_memory(_recompute_1f1b(), costs)
    plain = order_memory(load_schedule("1f1b").expand(ranks=4, microbatches=8), costs)
    assert [m.peak_activations for m in plain] == [4, 3, 2, 1]
    assert [m.peak_activations for m in half] == [3, 2, 2, 1]


# ----- runtime: one rank, two stages, in process ------------------------------------------


class Dropped(nn.Module):
    """A toy stage with dropout on its hidden state (on stage 0's output, on stage 1's input)."""

    def __init__(self, inner: nn.Module, first: bool):
        super().__init__()
        self.inner, self.first, self.drop = inner, first, nn.Dropout(0.3)

    def forward(self, *args):
        if self.first:
            h, emb = self.inner(*args)
            return self.drop(h), emb
        return self.inner(self.drop(args[0]), *args[1:])


def _run_one_rank(csv: str, microbatches: int, *, seed: int = 123):
    """Run one step of `csv` (one rank, stages 0 and 1) on the toy model with dropout:
    (losses, {param: grad}, most autograd graphs held at once)."""
    order = parse_csv(csv)
    split = toy_split(2, microbatch_size=2, seq_len=8)
    program = lower(order, split.graph)
    full = ToyLM(0)
    modules = {s: Dropped(ToyStage(full, s, split.stages[s].blocks, s == 1), s == 0) for s in (0, 1)}
    held = []
    runtime = RankRuntime(program=program, split=split, rank=0, modules=modules, device=torch.device("cpu"),
                          observer=lambda step, ins: held.append(len(runtime._acts)))
    gen = torch.Generator().manual_seed(1)
    batch = [{"input_ids": (ids := torch.randint(0, 256, (2, 8), generator=gen)), "labels": ids}
             for _ in range(microbatches)]
    torch.manual_seed(seed)
    losses = runtime.run_step(0, batch)
    grads = {f"{s}.{n}": p.grad.clone() for s, m in modules.items() for n, p in m.named_parameters()}
    return losses, grads, max(held)


PLAIN = "0F0,1F0,0F1,1F1,0F2,1F2,1B0,0B0,1I1,0I1,1W1,0W1,1B2,0B2"
RECOMPUTED = "0F0,1F0,0F1,1F1,0F2,1F2,1RF0,1B0,0RF0,0B0,1RF1,1I1,0RF1,0I1,1W1,0W1,0RF2,1RF2,1B2,0B2"


def test_recomputed_forward_gives_the_same_gradients_with_dropout():
    losses, grads, held = _run_one_rank(PLAIN, 3)
    rc_losses, rc_grads, rc_held = _run_one_rank(RECOMPUTED, 3)
    assert rc_losses == losses
    assert set(rc_grads) == set(grads)
    for name, grad in grads.items():
        assert torch.equal(rc_grads[name], grad), name
    # the plain run holds all 6 forward graphs before its first backward; with recompute
    # a forward keeps no graph, so at most the two recomputed ones of 2RF*
    assert (held, rc_held) == (6, 2)


def test_dropout_is_active():
    """The equality above is not trivial: the masks depend on the RNG (another seed, other
    gradients), so a recompute that drew new masks would not match."""
    _, grads, _ = _run_one_rank(PLAIN, 3)
    _, reseeded, _ = _run_one_rank(PLAIN, 3, seed=7)
    assert all(not torch.equal(reseeded[n], g) for n, g in grads.items() if n.startswith("1.inner.blocks"))

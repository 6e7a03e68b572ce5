"""The split backward: I then W gives exactly B's gradients, for every tiny-llama stage
and for toy modules whose parameters are read twice, read by the first op, or reached
from an output that no stage input feeds; and W does not redo I's work."""

from __future__ import annotations

import pytest
import torch
from ppc.exec.autograd_split import backward_full, backward_input, backward_weight, free_storage
from torch import nn


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(t.is_floating_point())


def _both(module: nn.Module, make_args, out_grads, *, free: bool = False):
    """(B's, I+W's) gradients: (input grads, {param name: grad}) of one forward each."""
    results = []
    for split in (False, True):
        module.zero_grad(set_to_none=True)
        args = make_args()
        outs = module(*args)
        outs = (outs,) if isinstance(outs, torch.Tensor) else tuple(outs)
        roots = [o for o in outs if o.requires_grad]
        grads = out_grads(roots)
        if free:
            for root in roots:
                free_storage(root)
        leaves = [a for a in args if a.requires_grad]
        params = [p for p in module.parameters() if p.requires_grad]
        if split:
            input_grads, work = backward_input(roots, grads, leaves, params)
            assert all(p.grad is None for p in params), "I must not touch parameter gradients"
            backward_weight(work)
        else:
            input_grads = backward_full(roots, grads, leaves, params)
        results.append((input_grads, {n: p.grad for n, p in module.named_parameters()}))
    return results


def _assert_same(full, split):
    (in_b, par_b), (in_s, par_s) = full, split
    assert len(in_b) == len(in_s)
    for b, s in zip(in_b, in_s):
        assert (b is None) == (s is None)
        if b is not None:
            torch.testing.assert_close(s, b, rtol=1e-5, atol=1e-6)
    assert set(par_b) == set(par_s)
    for name in par_b:
        assert par_b[name] is not None, f"{name}: B gave no gradient"
        assert par_s[name] is not None, f"{name}: I+W gave no gradient"
        torch.testing.assert_close(par_s[name], par_b[name], rtol=1e-5, atol=1e-6, msg=name)


class Reuse(nn.Module):
    """`a` is read by the first op and again later; `b` twice in a row; `c` only by a
    second output that depends on the parameters alone; `emb` is an embedding that is
    tied to the head, read first and last (as in a one-stage tied LM)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(8, 8, generator=g) / 3)
        self.b = nn.Parameter(torch.randn(8, 8, generator=g) / 3)
        self.c = nn.Parameter(torch.randn(8, generator=g))
        self.emb = nn.Parameter(torch.randn(5, 8, generator=g))

    def forward(self, x, ids):
        h = torch.tanh(x @ self.a) + self.emb[ids]
        h = torch.tanh(h @ self.b) @ self.b
        h = torch.sigmoid(h @ self.a.t())
        logits = h @ self.emb.t()
        return logits, (self.c * self.a.sum(0)).sum()


def _reuse_args(x_grad: bool):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, generator=g).requires_grad_(x_grad)
    ids = torch.randint(0, 5, (4,), generator=g)
    return lambda: (x.detach().requires_grad_(x_grad), ids)


def _reuse_grads(roots):
    g = torch.Generator().manual_seed(2)
    return [torch.randn(r.shape, generator=g) for r in roots]


@pytest.mark.parametrize("x_grad", [True, False], ids=["middle-stage", "first-stage"])
@pytest.mark.parametrize("free", [False, True], ids=["kept", "freed-outputs"])
def test_reused_parameters(x_grad, free):
    full, split = _both(Reuse(), _reuse_args(x_grad), _reuse_grads, free=free)
    _assert_same(full, split)
    if x_grad:
        assert full[0][0] is not None


def test_parameter_in_the_first_op_only():
    lin, act = nn.Linear(8, 8), nn.Sequential(nn.Tanh(), nn.Linear(8, 3))
    module = nn.Sequential(lin, act)
    x = torch.randn(4, 8)
    full, split = _both(module, lambda: (x.clone().requires_grad_(),), _reuse_grads)
    _assert_same(full, split)


@pytest.fixture(scope="module")
def tiny_llama():
    from ppc.exec.data import load_data, load_tokenizer

    from ppc.frontend import build_split, materialize_stage

    split = build_split("tiny-llama", stages=4, seq_len=32, microbatch_size=2)
    modules = [materialize_stage(split, s, device="cpu") for s in range(4)]
    batch = load_data(None, tokenizer=load_tokenizer(None), seq_len=32, seed=0).microbatches(
        0, microbatches=1, microbatch_size=2
    )[0]
    values = dict(batch)
    with torch.no_grad():
        for stage, module in zip(split.stages, modules):
            outs = module(*(values[n] for n in stage.inputs))
            values.update(zip(stage.outputs, outs))
    return split, modules, values


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_tiny_llama_stage(tiny_llama, stage):
    split, modules, values = tiny_llama
    meta = split.stages[stage]

    def make_args():
        return tuple(_leaf(values[n]) for n in meta.inputs)

    def out_grads(roots):
        if stage == 3:
            return [torch.full_like(roots[0], 0.25)]
        return [torch.randn(r.shape, generator=torch.Generator().manual_seed(3)) for r in roots]

    full, split_grads = _both(modules[stage], make_args, out_grads, free=stage < 3)
    _assert_same(full, split_grads)
    if stage > 0:
        assert full[0][0] is not None and full[0][0].abs().sum() > 0


def test_weight_pass_runs_no_input_side_node():
    """W restarts at the nodes that read parameters: the input-side nodes between them
    (here the tanh between the two linears, and the whole first linear's input grad) run
    in I only."""
    module = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    out = module(x)
    tanh_node = out.grad_fn.next_functions[1][0]
    while type(tanh_node).__name__ != "TanhBackward0":
        tanh_node = tanh_node.next_functions[0][0]
    calls = []
    tanh_node.register_prehook(lambda grads: calls.append(1))
    params = list(module.parameters())
    (gx,), work = backward_input([out], [torch.ones_like(out)], [x], params)
    assert len(calls) == 1 and gx is not None
    backward_weight(work)
    assert len(calls) == 1, "W ran an input-side node again"
    assert all(p.grad is not None for p in params)

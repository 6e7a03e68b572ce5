"""Frontend: each model family traces, splits between blocks, and keeps eager's loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ppc.errors import ModelError
from ppc.frontend import build_model, build_split, materialize_stage, split, trace
from ppc.frontend.models import PRESETS, load_config

FAMILIES = ["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gpt2"]
SEQ = 16


def _batch(seed: int = 0, batch: int = 2) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, SEQ), generator=generator)
    return {"input_ids": ids, "labels": ids}


def _chain(split_model, modules, batch: dict) -> dict:
    """Run stages one after the other, passing values by name; returns all values."""
    env = dict(batch)
    for stage, module in zip(split_model.stages, modules):
        outputs = module(*[env[name] for name in stage.inputs])
        assert isinstance(outputs, tuple) and len(outputs) == len(stage.outputs)
        env.update(zip(stage.outputs, outputs))
    return env


@pytest.fixture(scope="module", params=FAMILIES)
def traced(request):
    model = build_model(request.param, seed=1)
    batch = _batch()
    with torch.no_grad():
        eager = model(**batch).loss
    return request.param, model, trace(model, batch), eager


@pytest.mark.parametrize("stages", [2, 3, 6])
def test_split_keeps_eager_loss_and_cuts_between_blocks(traced, stages):
    _name, _, gm, eager = traced
    result = split(gm, stages)
    with torch.no_grad():
        loss = result.module(**_batch())
    assert loss.item() == pytest.approx(eager.item(), abs=1e-5)
    assert [s.layers for s in result.stages if s.layers]  # every stage runs blocks
    joined = [layer for s in result.stages for layer in s.layers]
    assert tuple(joined) == result.blocks and len(joined) == 8
    for stage in result.stages:
        targets = {n.target for n in stage.module.graph.nodes if n.op == "call_module"}
        assert set(stage.layers) <= targets
        assert not (targets & set(result.blocks)) - set(stage.layers)
    assert result.loss_name == result.stages[-1].outputs[-1]


def test_chained_stage_modules_give_eager_loss(traced):
    _, _, gm, eager = traced
    result = split(gm, 4)
    with torch.no_grad():
        env = _chain(result, [s.module for s in result.stages], _batch())
    assert env[result.loss_name].item() == pytest.approx(eager.item(), abs=1e-5)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_materialized_stages_match_build_model(name):
    model = build_model(name, seed=7)
    batch = _batch(3)
    with torch.no_grad():
        eager = model(**batch).loss.item()
    result = build_split(name, stages=3, seq_len=SEQ, microbatch_size=2, seed=7)
    modules = [materialize_stage(result, s, seed=7) for s in range(3)]
    with torch.no_grad():
        env = _chain(result, modules, batch)
    assert env[result.loss_name].item() == pytest.approx(eager, abs=1e-5)
    full = dict(model.named_parameters(remove_duplicate=False))
    for stage, module in zip(result.stages, modules):
        for local, param in module.named_parameters(remove_duplicate=False):
            assert torch.equal(param, full[stage.param_names[local]])
        for buffer_name, buffer in module.named_buffers():
            assert torch.equal(buffer, dict(model.named_buffers())[buffer_name])


def test_build_model_is_deterministic_and_seed_dependent():
    a = build_model("tiny-llama", seed=0)
    b = build_model("tiny-llama", seed=0)
    c = build_model("tiny-llama", seed=1)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    name = "model.layers.3.mlp.up_proj.weight"
    assert torch.equal(pa[name], pb[name])
    assert not torch.equal(pa[name], pc[name])
    assert torch.equal(pa["model.norm.weight"], torch.ones(64))
    assert 0.015 < pa[name].std().item() < 0.025


def test_materialize_holds_only_its_stage():
    result = build_split("tiny-llama", stages=4, seq_len=SEQ, microbatch_size=2)
    module = materialize_stage(result, 1, seed=0)
    names = {n for n, _ in module.named_parameters()}
    assert names and all(n.startswith(("model.layers.2.", "model.layers.3.")) for n in names)
    assert all(p.device.type == "cpu" for p in module.parameters())
    # the traced split itself stays on the meta device
    assert all(p.device.type == "meta" for p in result.stages[0].module.parameters())


def test_llama_1b_preset_shape_on_meta():
    model = build_model("llama-3.2-1b", device="meta")
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400
    config = load_config("llama-3.2-1b")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        2048, 16, 32)
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (
        8, 8192, 128256)
    assert config.tie_word_embeddings and config.max_position_embeddings == 131072
    assert config.rope_parameters["rope_type"] == "llama3"
    assert config.rope_parameters["rope_theta"] == 500000.0


def test_unknown_model_lists_presets():
    with pytest.raises(ModelError, match="not a preset") as error:
        build_model("no-such-model")
    assert all(name in str(error.value) for name in PRESETS)


def test_local_directory_loads_config_and_weights(tmp_path):
    from safetensors.torch import save_file

    model = build_model("tiny-llama", seed=5)
    model.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "layers.2." in k}
    state = {k: torch.full_like(v, 0.5) for k, v in state.items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    result = build_split(str(tmp_path), stages=4, seq_len=SEQ, microbatch_size=1, seed=5)
    module = materialize_stage(result, 1, seed=5)
    params = dict(module.named_parameters())
    assert torch.equal(params["model.layers.2.mlp.up_proj.weight"],
                       torch.full((176, 64), 0.5))
    assert torch.equal(params["model.layers.3.mlp.up_proj.weight"],
                       dict(model.named_parameters())["model.layers.3.mlp.up_proj.weight"])


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(32, 32), nn.ReLU())
                                      for _ in range(6)])
        self.head = nn.Linear(32, 4)

    def forward(self, x, labels):
        return nn.functional.cross_entropy(self.head(self.layers(x)), labels)


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1)
                                   for i in range(6))
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(x.flatten(1)).logsumexp(-1).mean()


@pytest.mark.parametrize("stages", [2, 3, 6])
def test_plain_modules_split_with_equal_output(stages):
    torch.manual_seed(0)
    mlp, x, y = _MLP(), torch.randn(4, 32), torch.randint(0, 4, (4,))
    cnn, image = _CNN(), torch.randn(2, 3, 8, 8)
    for model, inputs in ((mlp, {"x": x, "labels": y}), (cnn, {"x": image})):
        result = split(trace(model, inputs), stages)
        with torch.no_grad():
            assert result.module(**inputs).item() == pytest.approx(model(**inputs).item(),
                                                                   abs=1e-6)
        assert len(result.blocks) == 6 and all(s.layers for s in result.stages)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        h = self.proj(x)
        if h.sum() > 0:
            return h.mean()
        return h.sum()


def test_untraceable_model_names_node_and_reason():
    with pytest.raises(ModelError, match=r"cannot trace after node 'gt' .*test_frontend_models.py:\d+: .*control flow"):
        trace(_DataDependent(), {"x": torch.randn(2, 4)})


def test_unknown_input_and_too_many_stages_are_model_errors():
    with pytest.raises(ModelError, match="has no argument 'tokens'"):
        trace(_DataDependent(), {"tokens": torch.randn(2, 4)})
    gm = trace(_MLP(), {"x": torch.randn(4, 32), "labels": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(ModelError, match="cannot be split into 8 stages"):
        split(gm, 8)
    with pytest.raises(ModelError, match="unknown split method"):
        split(gm, 2, by="magic")

"""Model presets, deterministic initialisation and local Hugging Face directories.

A model is named by a preset ("tiny-llama", "llama-3.2-1b", "tiny-qwen2", "tiny-mistral",
"tiny-gpt2") or by a local directory holding a Hugging Face config.json (and optionally
safetensors weights). Nothing is fetched from a hub.

Initialisation is per parameter: each parameter is drawn from its own torch.Generator
seeded by a hash of (seed, full parameter name), on the CPU, then cast and moved. So the
same (model, seed) gives the same weights on every device and for every subset of
parameters - which is what lets one pipeline stage materialise only its own weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ppc.errors import ModelError

_TINY_LLAMA_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
}

PRESETS: dict[str, dict] = {
    "tiny-llama": dict(model_type="llama", tie_word_embeddings=False, **_TINY_LLAMA_SHAPE),
    "tiny-llama-tied": dict(model_type="llama", tie_word_embeddings=True, **_TINY_LLAMA_SHAPE),
    "llama-3.2-1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
    },
    "tiny-qwen2": dict(model_type="qwen2", tie_word_embeddings=True, **_TINY_LLAMA_SHAPE),
    "tiny-mistral": dict(
        model_type="mistral", tie_word_embeddings=False, sliding_window=None, **_TINY_LLAMA_SHAPE
    ),
    "tiny-gpt2": {
        "model_type": "gpt2", "n_embd": 64, "n_layer": 8, "n_head": 4, "vocab_size": 256, "n_positions": 512,
        "tie_word_embeddings": True, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "bos_token_id": 0, "eos_token_id": 0,
    },
}
"""Preset name -> transformers config keywords (model_type picks the config class)."""

INITIALIZER_RANGE = 0.02


def load_config(model: str):
    """The transformers config of a preset or of a local directory's config.json."""
    from transformers import AutoConfig

    if model in PRESETS:
        keywords = dict(PRESETS[model])
        model_type = keywords.pop("model_type")
        config = AutoConfig.for_model(model_type, **keywords)
    else:
        path = Path(model)
        if not (path / "config.json").is_file():
            known = ", ".join(PRESETS)
            raise ModelError(
                f"unknown model {model!r}: not a preset ({known}) nor a directory with config.json"
            )
        try:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        except (ValueError, OSError, json.JSONDecodeError) as error:
            raise ModelError(f"{path / 'config.json'}: {error}") from error
    config._attn_implementation = "sdpa"
    return config


def _causal_lm_class(config):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError as error:
        raise ModelError(
            f"model type {config.model_type!r} has no causal-LM class in transformers"
        ) from error


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device while buffers (rotary tables) stay real."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            param = module._parameters[name]
            module._parameters[name] = nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad
            )

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build_skeleton(model: str) -> nn.Module:
    """The model with parameters on the meta device and real CPU buffers."""
    config = load_config(model)
    cls = _causal_lm_class(config)
    with _parameters_on_meta(), torch.device("cpu"):
        module = cls(config)
    module.train()
    return module


def build_model(
    model: str,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The full model with deterministic weights (see module docstring); on "meta" only
    shapes exist. A local directory with safetensors weights loads those instead."""
    module = build_skeleton(model)
    buffers = {name: buf.clone() for name, buf in module.named_buffers()}
    plan = init_plan(module)
    std = initializer_range(module)
    names = canonical_names(module)
    module.to_empty(device=device)
    for local, param in module.named_parameters(remove_duplicate=False):
        param.data = param.data.to(dtype)
        if param.device.type != "meta":
            canonical = names[local]
            fill(param, initial_value(canonical, tuple(param.shape), plan[canonical],
                                      seed=seed, std=std))
    for name, buf in module.named_buffers():
        buf.data = buffers[name].to(buf.device if buf.device.type != "meta" else device)
    weights = weights_dir(model)
    if weights is not None and torch.device(device).type != "meta":
        load_weights(module, weights, names)
    if getattr(module.config, "tie_word_embeddings", False) and hasattr(module, "tie_weights"):
        module.tie_weights()
    return module


def canonical_names(module: nn.Module) -> dict[str, str]:
    """Every parameter name (duplicates included) -> the first name of that parameter."""
    first: dict[int, str] = {}
    names: dict[str, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names[name] = first.setdefault(id(param), name)
    return names


def parameter_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def init_kind(owner: nn.Module, leaf_name: str) -> str:
    """"normal", "zeros" or "ones": the HF-like scheme for one parameter."""
    if leaf_name == "bias":
        return "zeros"
    if "norm" in type(owner).__name__.lower():
        return "ones"
    return "normal"


def init_plan(module: nn.Module) -> dict[str, str]:
    """Canonical parameter name -> init kind, from the owning module of the full model."""
    plan = {}
    for name, _ in module.named_parameters():
        owner_path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        plan[name] = init_kind(owner, leaf)
    return plan


def initializer_range(module: nn.Module) -> float:
    config = getattr(module, "config", None)
    return float(getattr(config, "initializer_range", INITIALIZER_RANGE))


def initial_value(
    name: str, shape: tuple[int, ...], kind: str, *, seed: int, std: float
) -> torch.Tensor:
    """The initial float32 CPU value of the parameter with this full-model name."""
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "ones":
        return torch.ones(shape)
    generator = torch.Generator().manual_seed(parameter_seed(seed, name))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


def fill(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.to(device=param.device, dtype=param.dtype))


def weight_files(directory: str | Path) -> list[Path]:
    """A model directory's weight files: its safetensors, else its PyTorch `.bin` files."""
    directory = Path(directory)
    return sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))


def weights_dir(model: str) -> Path | None:
    if model in PRESETS:
        return None
    path = Path(model)
    return path if weight_files(path) else None


def _tensors(file: Path) -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    """(name, loader) of each tensor in a weight file; `.bin` files load with
    weights_only=True (no code runs), memory-mapped."""
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield key, (lambda key=key: handle.get_tensor(key))
        return
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file: name it, one line
        raise ModelError(f"{file}: cannot load weights ({type(error).__name__}: {error})") from None
    for key, value in state.items():
        yield key, (lambda value=value: value)


def checkpoint_keys(directory: str | Path) -> set[str]:
    """Names of every tensor in a model directory's weight files."""
    return {key for file in weight_files(directory) for key, _ in _tensors(file)}


def check_checkpoint(model: str, *, allow_missing: bool = False, allow_unexpected: bool = False,
                     skeleton: nn.Module | None = None) -> None:
    """A model directory's weights against the model's parameters: one ModelError line for
    missing or unexpected keys (unless allowed), so nothing trains from a silent random
    init. Tied parameters count once; a directory without weight files is a random init.
    `skeleton`: the model already built on meta, when the caller has it."""
    directory = weights_dir(model)
    if directory is None:
        return
    if skeleton is None:  # tied parameters tied: one object, several names
        skeleton = build_model(model, device="meta")
    aliases: dict[int, set[str]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), set()).add(name)
    found = checkpoint_keys(directory)
    known = set().union(*aliases.values())
    missing = sorted(min(names) for names in aliases.values() if not names & found)
    unexpected = sorted(found - known - {n for n, _ in skeleton.named_buffers()})
    for names, allowed, what, flag in ((missing, allow_missing, "missing", "--allow-missing-keys"),
                                       (unexpected, allow_unexpected, "unexpected", "--allow-unexpected-keys")):
        if names and not allowed:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ModelError(f"{directory}: {len(names)} {what} parameter(s) in its weights: {shown} "
                             f"(pass {flag} to train anyway)")


def load_weights(module: nn.Module, directory: Path, names: dict[str, str]) -> list[str]:
    """Copy into `module` the tensors of `directory`'s weight files that it holds
    (`names`: local name -> checkpoint name); reads only those tensors. Returns the
    checkpoint names loaded."""
    wanted: dict[str, list[str]] = {}
    for local, canonical in names.items():
        wanted.setdefault(canonical, []).append(local)
    params = dict(module.named_parameters(remove_duplicate=False))
    loaded = []
    for file in weight_files(directory):
        for key, tensor in _tensors(file):
            for local in wanted.get(key, ()):
                fill(params[local], tensor())
                loaded.append(key)
    return loaded


def parameter_count(module: nn.Module) -> int:
    """Parameters of the model, each tied parameter once."""
    return sum(p.numel() for p in module.parameters())

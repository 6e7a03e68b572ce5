"""Loading that never guesses: a model directory's safetensors or pytorch_model.bin
(weights_only) load; missing or unexpected keys are one error line, not a random init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ppc.errors import ModelError
from ppc.frontend.models import build_model, check_checkpoint


def _hf_dir(tmp_path: Path, fmt: str, drop: str | None = None, extra: str | None = None) -> Path:
    model = build_model("tiny-llama", seed=7)
    directory = tmp_path / fmt
    model.config.save_pretrained(directory)
    state = {k: v.clone() for k, v in model.state_dict().items() if k != drop and "rotary" not in k}
    if extra:
        state[extra] = torch.zeros(2)
    if fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_weights_load_from_either_format(tmp_path: Path, fmt: str) -> None:
    directory = _hf_dir(tmp_path, fmt)
    check_checkpoint(str(directory))
    loaded = build_model(str(directory), seed=0)  # another seed: only the file can give seed 7's weights
    expected = build_model("tiny-llama", seed=7)
    for (name, a), (_, b) in zip(loaded.named_parameters(), expected.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_missing_and_unexpected_keys_are_refused(tmp_path: Path) -> None:
    missing = _hf_dir(tmp_path / "m", "bin", drop="model.layers.0.mlp.up_proj.weight")
    with pytest.raises(ModelError, match=r"1 missing parameter\(s\) in its weights: model.layers.0.mlp.up_proj.weight"):
        check_checkpoint(str(missing))
    check_checkpoint(str(missing), allow_missing=True)
    unexpected = _hf_dir(tmp_path / "u", "bin", extra="adapter.weight")
    with pytest.raises(ModelError, match=r"1 unexpected parameter\(s\) .*adapter.weight"):
        check_checkpoint(str(unexpected))


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    directory = _hf_dir(tmp_path, "bin")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model.embed_tokens.weight": Evil()}, directory / "pytorch_model.bin")
    with pytest.raises(ModelError, match="cannot load weights"):
        check_checkpoint(str(directory))

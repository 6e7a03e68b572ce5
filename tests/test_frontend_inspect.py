"""`ppc inspect` prints the split and its cost balance."""

from __future__ import annotations

import pytest

from ppc.cli import main


def test_inspect_prints_stages_tied_weight_and_balance(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as done:
        main(["inspect", "--model", "tiny-llama-tied", "--stages", "4", "--seq-len", "16",
              "--by", "layers"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "model.layers.6-7" in out
    assert "tied weight model.embed_tokens.weight: held by stages 0, 3" in out
    assert "(not sent): model_rotary_emb" in out
    assert "cost balance" in out and "equal layers" in out


def test_inspect_unknown_model_exits_2(capsys):
    with pytest.raises(SystemExit) as done:
        main(["inspect", "--model", "nope", "--stages", "2"])
    assert done.value.code == 2
    assert "unknown model 'nope'" in capsys.readouterr().err

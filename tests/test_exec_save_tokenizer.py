"""`--save` writes the run's tokenizer beside the merged checkpoint, so the directory loads
with transformers' Auto classes as one model."""

from __future__ import annotations

from pathlib import Path

from ppc.exec.checkpoint import write_hf

from ppc.frontend.models import build_model


def _tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "pipeline": 2, "world": 3}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(directory)
    return directory


def test_save_copies_the_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _tokenizer(tmp_path / "tok")
    model = build_model("tiny-llama", seed=3)
    out = tmp_path / "saved"
    write_hf(out, model="tiny-llama", weights={k: v.detach() for k, v in model.state_dict().items()},
             tokenizer=str(source))
    assert AutoTokenizer.from_pretrained(out, local_files_only=True)("hello pipeline world")["input_ids"] == [1, 2, 3]
    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert loaded.model.embed_tokens.weight.equal(model.model.embed_tokens.weight)

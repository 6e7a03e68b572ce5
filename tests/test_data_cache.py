"""The token cache (exec/token_cache.py): a corpus is tokenized once; later loads map the
cached int32 array and call no tokenizer; changed data, column or tokenizer gives a new key;
concurrent writers tokenize once and leave a whole file; a damaged file is rebuilt; the
launcher's preflight fills the cache the ranks read."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ppc.exec import launch
from ppc.exec.data import ByteTokenizer, load_data, load_tokenizer, load_tokens
from ppc.exec.token_cache import CACHE_ENV, cache_dir

from ppc.cli import main

TEXT = "Pipelines split a model into stages; each rank runs its own. " * 8


class CountingTokenizer(ByteTokenizer):
    """The byte tokenizer (same cache key), counting the documents it encodes."""

    def __init__(self, delay: float = 0.0):
        self.docs = 0
        self.delay = delay
        self._lock = threading.Lock()

    def encode_batch(self, texts):
        time.sleep(self.delay)
        with self._lock:
            self.docs += len(texts)
        return super().encode_batch(texts)


def _corpus(tmp: Path, text: str = TEXT) -> Path:
    path = tmp / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _npy(cache: Path) -> list[Path]:
    return sorted((cache / "tokens").glob("*.npy"))


def test_second_load_tokenizes_nothing_and_maps_the_cached_array(tmp_path, caplog):
    data, cache = _corpus(tmp_path), tmp_path / "cache"
    first = CountingTokenizer()
    one = load_data(str(data), tokenizer=first, seq_len=16, cache_dir=cache)
    assert first.docs == 1
    [file] = _npy(cache)
    stored = np.load(file, allow_pickle=False)  # a plain .npy: no pickle needed to read it
    assert stored.dtype == np.int32 and stored.tolist() == list(TEXT.encode())
    second = CountingTokenizer()
    with caplog.at_level(logging.INFO, logger="ppc.exec.token_cache"):
        two = load_data(str(data), tokenizer=second, seq_len=16, cache_dir=cache)
    assert second.docs == 0
    assert f"data: cached tokens from {file}" in caplog.text
    assert two.tokens.tolist() == one.tokens.tolist() == list(TEXT.encode())
    assert two.sequence(3).tolist() == one.sequence(3).tolist()


def test_changed_data_is_tokenized_again(tmp_path):
    data, cache = _corpus(tmp_path), tmp_path / "cache"
    load_tokens(str(data), tokenizer=CountingTokenizer(), cache_dir=cache)
    same_size = TEXT.replace("stages", "STAGES")
    data.write_text(same_size, encoding="utf-8")
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same size, newer
    counting = CountingTokenizer()
    tokens = load_tokens(str(data), tokenizer=counting, cache_dir=cache)
    assert counting.docs == 1
    assert tokens.tolist() == list(same_size.encode())
    assert len(_npy(cache)) == 2  # the stale file is kept but never read for this data


def test_column_and_tokenizer_are_part_of_the_key(tmp_path):
    data, cache = tmp_path / "c.jsonl", tmp_path / "cache"
    data.write_text('{"text": "aaaa", "body": "bbbbbb"}\n', encoding="utf-8")
    text = load_tokens(str(data), tokenizer=ByteTokenizer(), cache_dir=cache)
    body = load_tokens(str(data), tokenizer=ByteTokenizer(), column="body", cache_dir=cache)
    assert text.tolist() == list(b"aaaa") and body.tolist() == list(b"bbbbbb")

    class Other(ByteTokenizer):
        cache_key = "another tokenizer"

    load_tokens(str(data), tokenizer=Other(), cache_dir=cache)
    assert len(_npy(cache)) == 3


def test_concurrent_loads_tokenize_once_and_agree(tmp_path):
    data, cache = _corpus(tmp_path), tmp_path / "cache"
    counting = CountingTokenizer(delay=0.3)  # holds the lock while the others arrive
    results: list[list[int]] = []

    def load() -> None:
        results.append(load_tokens(str(data), tokenizer=counting, cache_dir=cache).tolist())

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counting.docs == 1
    assert results == [list(TEXT.encode())] * 4
    assert [p.name for p in (cache / "tokens").iterdir()] == [_npy(cache)[0].name]  # no tmp, no lock


def test_a_damaged_cache_file_is_rebuilt(tmp_path, caplog):
    data, cache = _corpus(tmp_path), tmp_path / "cache"
    load_tokens(str(data), tokenizer=ByteTokenizer(), cache_dir=cache)
    [file] = _npy(cache)
    file.write_bytes(file.read_bytes()[:20])  # a truncated header
    counting = CountingTokenizer()
    with caplog.at_level(logging.WARNING, logger="ppc.exec.token_cache"):
        tokens = load_tokens(str(data), tokenizer=counting, cache_dir=cache)
    assert "is unreadable" in caplog.text
    assert counting.docs == 1 and tokens.tolist() == list(TEXT.encode())
    assert np.load(file, allow_pickle=False).size == len(TEXT.encode())


def test_an_unwritable_cache_folder_falls_back_to_memory(tmp_path, caplog):
    data, blocker = _corpus(tmp_path), tmp_path / "a-file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="ppc.exec.token_cache"):
        tokens = load_tokens(str(data), tokenizer=ByteTokenizer(), cache_dir=blocker / "cache")
    assert tokens.tolist() == list(TEXT.encode())
    assert "cannot create token cache" in caplog.text


def test_cache_folder_defaults_to_ppc_cache_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_dir(None) == tmp_path / "env"
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir(None) == Path.home() / ".cache" / "ppc"


def test_the_embedded_corpus_is_not_cached(tmp_path, monkeypatch):
    from pydoc_data.topics import topics

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    counting = CountingTokenizer()
    load_tokens(None, tokenizer=counting)
    assert counting.docs == len(topics) and not (tmp_path / "cache").exists()


def test_the_preflight_tokenizes_and_the_ranks_only_read(tmp_path):
    """`ppc run`'s data check (in the launcher) fills the cache; what a worker then loads
    calls no tokenizer. (End to end, with the ranks' log lines: the slow test below.)"""
    from ppc.exec.config import RunConfig
    from ppc.exec.preflight import check_data

    data, cache = _corpus(tmp_path), tmp_path / "cache"
    check_data(RunConfig(data=str(data), data_cache=str(cache), seq_len=16))
    assert len(_npy(cache)) == 1
    counting = CountingTokenizer()
    load_data(str(data), tokenizer=counting, seq_len=16, cache_dir=cache)
    assert counting.docs == 0


def test_a_data_cache_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys):
    data, blocker = _corpus(tmp_path), tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setattr(launch, "self_launch", lambda *a, **k: pytest.fail("workers started"))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--ranks", "2", "--microbatches", "2", "--device", "cpu", "--data", str(data),
              "--data-cache", str(blocker)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"ppc: --data-cache {blocker}: {blocker} is not a directory"


def test_a_hf_tokenizer_is_cached_under_its_files(tmp_path):
    """A local Hugging Face tokenizer: ids then end-of-text per document, as before the
    cache; editing the tokenizer's files gives a new key."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(["a", "b", "c", "d"])}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    directory = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<eos>").save_pretrained(directory)
    data, cache = tmp_path / "c.jsonl", tmp_path / "cache"
    data.write_text('{"text": "a b c"}\n{"text": "d x"}\n', encoding="utf-8")
    tokenizer = load_tokenizer(str(directory))
    assert load_tokens(str(data), tokenizer=tokenizer, cache_dir=cache).tolist() == [2, 3, 4, 1, 5, 0, 1]
    assert tokenizer.encode("a b c") == [2, 3, 4, 1]
    config = directory / "tokenizer_config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    load_tokens(str(data), tokenizer=load_tokenizer(str(directory)), cache_dir=cache)
    assert len(_npy(cache)) == 2

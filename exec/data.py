"""Training data: text sources, tokenizers, and packing into fixed-length sequences.

The default corpus is Python's own reference documentation (`pydoc_data.topics`), which
every Python installation carries, so a run needs no download. Text is tokenized once,
concatenated, and cut into sequences of `seq_len` tokens; no padding, so every
microbatch holds the same number of tokens. The order is a seeded permutation per epoch
and depends only on the sequence index, so a run resumes at any step.

The global batch of step t is sequences t x G .. (t + 1) x G - 1 of that order, G = D x M x B
(D replicas, M microbatches of B sequences). It is cut into D x M microbatches in order,
and replica d takes microbatches d x M .. (d + 1) x M - 1: microbatch m of replica d holds
sequences t x G + (d x M + m) x B + b, b < B. No sequence is seen twice in a step, and the
single-process twin (`--reference --dp D`) runs the D x M microbatches in that same order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ppc.exec.data_sources import DEFAULT_COLUMN, check_source, documents
from ppc.exec.token_cache import cache_file, load_or_tokenize, tokenize

from ppc.errors import RunError

log = logging.getLogger(__name__)

__all__ = ["ByteTokenizer", "PackedData", "load_data", "load_text", "load_tokenizer", "load_tokens"]


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")
"""Files of a model directory that do not change its tokenizer (left out of its cache key)."""


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to download."""

    vocab_size = 256
    cache_key = "bytes"
    """What names this tokenizer in the token cache's key (exec/token_cache.py)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class _HFTokenizer:
    """A local Hugging Face tokenizer directory, with an end-of-text token between documents."""

    def __init__(self, directory: str):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.vocab_size = len(self._tok)
        self.cache_key = _directory_key(directory, kind=type(self._tok).__name__)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids and the end-of-text id (one call: a fast tokenizer runs the batch
        on its own threads)."""
        eos = self._tok.eos_token_id
        tail = [eos] if eos is not None else []
        return [ids + tail for ids in self._tok(texts, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def _directory_key(directory: str, *, kind: str) -> dict:
    """A tokenizer directory's identity: its path, its files' sizes and mtimes (weights left
    out), the tokenizer class and the transformers version."""
    import transformers

    root = Path(directory).resolve()
    files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(root.iterdir())
             if p.is_file() and p.suffix not in WEIGHT_SUFFIXES]
    return {"dir": str(root), "files": files, "class": kind, "transformers": transformers.__version__}


def load_tokenizer(directory: str | None):
    """The byte tokenizer, or the Hugging Face tokenizer in `directory`."""
    if directory is None:
        return ByteTokenizer()
    if not Path(directory).is_dir():
        raise RunError(f"tokenizer directory not found: {directory}")
    try:
        return _HFTokenizer(directory)
    except (OSError, ValueError) as error:
        raise RunError(f"cannot load tokenizer from {directory}: {error}") from error


def load_text(path: str | None, *, column: str = DEFAULT_COLUMN) -> list[str]:
    """Documents of `path` (exec/data_sources.py: .txt, .jsonl, .parquet, .arrow or a
    datasets directory), or the embedded Python reference documentation when `path` is None."""
    return list(documents(path, column=column))


@dataclass(slots=True, kw_only=True)
class PackedData:
    """A token stream cut into sequences; batches are addressed by step."""

    tokens: torch.Tensor
    """All tokens, 1-D: int32 (memory-mapped from the token cache) or int64; sequences come
    out int64."""
    seq_len: int
    seed: int = 0
    _perms: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_sequences(self) -> int:
        return self.tokens.numel() // self.seq_len

    def sequence(self, index: int) -> torch.Tensor:
        """The `index`-th sequence of the run (epochs wrap around, each reshuffled)."""
        epoch, offset = divmod(index, self.num_sequences)
        perm = self._perms.get(epoch)
        if perm is None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = self._perms[epoch] = torch.randperm(self.num_sequences, generator=gen)
        start = int(perm[offset]) * self.seq_len
        return self.tokens[start : start + self.seq_len].long()

    def microbatches(
        self, step: int, *, microbatches: int, microbatch_size: int, replicas: int = 1, replica: int = 0
    ) -> list[dict[str, torch.Tensor]]:
        """Replica `replica`'s shard of the global batch of `step` (0-based), as
        `microbatches` dicts of [B, seq_len] (the module docstring gives the order).

        Labels equal input_ids (the model shifts them), as in Hugging Face causal LMs.
        """
        if not 0 <= replica < replicas:
            raise ValueError(f"replica {replica} is outside {replicas} replicas")
        first = (step * replicas + replica) * microbatches * microbatch_size
        out = []
        for m in range(microbatches):
            rows = [self.sequence(first + m * microbatch_size + b) for b in range(microbatch_size)]
            ids = torch.stack(rows)
            out.append({"input_ids": ids, "labels": ids})
        return out


def load_tokens(
    path: str | None, *, tokenizer, column: str = DEFAULT_COLUMN, cache_dir: str | Path | None = None,
    cache: bool = True,
) -> torch.Tensor:
    """All tokens of `path`, 1-D int32. With `cache` (and a tokenizer that has a `cache_key`)
    they come from the token cache (exec/token_cache.py), tokenized and written there on the
    first call; the embedded corpus (`path` None) is tokenized in memory every time."""
    key = getattr(tokenizer, "cache_key", None)
    if path is None or not cache or key is None:
        return torch.from_numpy(tokenize(documents(path, column=column), tokenizer, what=str(path)))
    check_source(path)  # before its files are looked at for the cache key
    file = cache_file(path, column=column, tokenizer_key=key, directory=cache_dir)
    tokens = load_or_tokenize(file, lambda: tokenize(documents(path, column=column), tokenizer, what=path))
    return torch.from_numpy(tokens)


def load_data(
    path: str | None, *, tokenizer, seq_len: int, seed: int = 0, column: str = DEFAULT_COLUMN,
    cache_dir: str | Path | None = None, cache: bool = True,
) -> PackedData:
    """The tokens of `path` (`load_tokens`) packed into sequences of `seq_len`."""
    tokens = load_tokens(path, tokenizer=tokenizer, column=column, cache_dir=cache_dir, cache=cache)
    if tokens.numel() < seq_len:
        raise RunError(
            f"data holds {tokens.numel():,} tokens, fewer than one sequence of --seq-len {seq_len}"
        )
    log.info("data: %s tokens, %s sequences of %s", tokens.numel(), tokens.numel() // seq_len, seq_len)
    return PackedData(tokens=tokens, seq_len=seq_len, seed=seed)

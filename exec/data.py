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

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ppc.errors import RunError
from ppc.inputs import decode

log = logging.getLogger(__name__)

__all__ = ["ByteTokenizer", "PackedData", "load_data", "load_text", "load_tokenizer"]


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to download."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class _HFTokenizer:
    """A local Hugging Face tokenizer directory, with an end-of-text token between documents."""

    def __init__(self, directory: str):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False)
        eos = self._tok.eos_token_id
        return ids + ([eos] if eos is not None else [])

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


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


def load_text(path: str | None) -> list[str]:
    """Documents from a .txt file (one document), a .jsonl file ("text" field), or the
    embedded Python reference documentation when `path` is None."""
    if path is None:
        from pydoc_data.topics import topics

        return [topics[key] for key in sorted(topics)]
    file = Path(path)
    if not file.is_file():
        raise RunError(f"data file not found: {path}")
    if file.suffix == ".jsonl":
        return _read_jsonl(file)
    if file.suffix == ".txt":
        return [_read(file)]
    raise RunError(f"unsupported data file {path}: expected .txt or .jsonl")


def _read(file: Path) -> str:
    """The UTF-8 text of a data file; a bad byte is one positioned RunError line."""
    try:
        data = file.read_bytes()
    except OSError as error:
        raise RunError(f"cannot read data file {file}: {error.strerror or error}") from None
    return decode(data, str(file), error=RunError)


def _read_jsonl(file: Path) -> list[str]:
    docs = []
    for number, line in enumerate(_read(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RunError(f"{file}:{number}: not JSON: {error.msg}") from error
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise RunError(f'{file}:{number}: expected an object with a "text" string')
        docs.append(record["text"])
    return docs


@dataclass(slots=True, kw_only=True)
class PackedData:
    """A token stream cut into sequences; batches are addressed by step."""

    tokens: torch.Tensor
    """All tokens, int64, 1-D."""
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
        return self.tokens[start : start + self.seq_len]

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


def load_data(
    path: str | None, *, tokenizer, seq_len: int, seed: int = 0
) -> PackedData:
    """Tokenize the documents of `path` and pack them into sequences of `seq_len`."""
    ids: list[int] = []
    for doc in load_text(path):
        ids.extend(tokenizer.encode(doc))
    if len(ids) < seq_len:
        raise RunError(
            f"data holds {len(ids):,} tokens, fewer than one sequence of --seq-len {seq_len}"
        )
    log.info("data: %s tokens, %s sequences of %s", len(ids), len(ids) // seq_len, seq_len)
    return PackedData(tokens=torch.tensor(ids, dtype=torch.long), seq_len=seq_len, seed=seed)

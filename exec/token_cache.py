"""Tokenize a corpus once: a flat int32 token array on disk, memory-mapped by every reader.

The cache file is a NumPy .npy array (no pickles) named by a SHA-256 key over everything
that decides the tokens: the data's resolved path and, for each of its files, the size,
modification time and inode; the text column; the tokenizer's own key (for a Hugging Face
tokenizer: its directory's files and the transformers version); and FORMAT. Changed data
gives a new key, so a stale file is never read (it stays until the cache folder is
cleaned). The folder is `--data-cache DIR`, else $PPC_CACHE, else ~/.cache/ppc.

Writers write a temporary file in the folder and rename it into place, so a reader never
sees a partial array and concurrent writers cannot corrupt it. On POSIX the writers of one
key also take an advisory lock on `<name>.lock`, so the ranks of a node started without
the launcher's preflight (an external torchrun) tokenize once, not once each.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ppc.errors import RunError

log = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "FORMAT", "cache_dir", "cache_file", "data_fingerprint", "load_or_tokenize",
           "tokenize"]

CACHE_ENV = "PPC_CACHE"
FORMAT = 1
"""Bumped when ppc changes how documents become tokens (e.g. the separator between them)."""
BATCH_DOCS = 256
"""Documents handed to a tokenizer's `encode_batch` at a time."""


def cache_dir(directory: str | Path | None = None) -> Path:
    """`directory`, else $PPC_CACHE, else ~/.cache/ppc."""
    if directory:
        return Path(directory)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "ppc"


def data_fingerprint(path: str | Path, *, column: str) -> dict:
    """What identifies the data's content without reading it: the resolved path, and the
    size, mtime (ns) and inode of the file or of every file under the directory."""
    root = Path(path).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    stats = []
    for file in files:
        st = file.stat()
        stats.append([file.relative_to(root).as_posix() if root.is_dir() else "", st.st_size,
                      st.st_mtime_ns, st.st_ino])
    return {"path": str(root), "files": stats, "column": column}


def cache_file(path: str | Path, *, column: str, tokenizer_key: object, directory: str | Path | None) -> Path:
    """The cache file for `path` read through `column` and tokenized by `tokenizer_key`."""
    record = {"format": FORMAT, "data": data_fingerprint(path, column=column), "tokenizer": tokenizer_key}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).resolve().name)[:60] or "data"
    return cache_dir(directory) / "tokens" / f"{stem}-{key[:24]}.npy"


def tokenize(docs: Iterable[str], tokenizer, *, what: str) -> np.ndarray:
    """All documents' tokens, concatenated, as int32; `encode_batch` when the tokenizer has
    it, else `encode` per document. Raises RunError when no document holds any text."""
    batch_encode = getattr(tokenizer, "encode_batch", None)
    chunks: list[np.ndarray] = []
    batch: list[str] = []
    has_text = False

    def flush() -> None:
        encoded = batch_encode(batch) if batch_encode else [tokenizer.encode(doc) for doc in batch]
        chunks.extend(np.asarray(ids, dtype=np.int32) for ids in encoded)
        batch.clear()

    for doc in docs:
        has_text = has_text or bool(doc.strip())
        batch.append(doc)
        if len(batch) == BATCH_DOCS:
            flush()
    if batch:
        flush()
    if not has_text:
        raise RunError(f"--data {what} holds no text")
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)


def load_or_tokenize(file: Path, make) -> np.ndarray:
    """The int32 tokens in `file` (memory-mapped, copy-on-write), or `make()`'s, written to
    `file` first. A cache folder that cannot be written is a warning: the tokens are
    returned from memory."""
    tokens = _load(file)
    if tokens is not None:
        return tokens
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("data: cannot create token cache %s (%s); tokenizing in memory", file.parent, error)
        return make()
    with _locked(file.with_suffix(".lock")):
        tokens = _load(file)  # another process wrote it while this one waited
        if tokens is not None:
            return tokens
        tokens = make()
        try:
            _write(file, tokens)
        except OSError as error:
            log.warning("data: cannot write token cache %s (%s)", file, error)
            return tokens
        log.info("data: tokenized once into %s (%s tokens)", file, f"{tokens.size:,}")
    written = _load(file, announce=False)  # the mapped file, so the array in memory is freed
    return tokens if written is None else written


def _load(file: Path, *, announce: bool = True) -> np.ndarray | None:
    if not file.is_file():
        return None
    try:
        tokens = np.load(file, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as error:
        log.warning("data: token cache %s is unreadable (%s); tokenizing again", file, error)
        return None
    if tokens.ndim != 1 or tokens.dtype != np.int32:
        log.warning("data: token cache %s holds %s %s, not a flat int32 array; tokenizing again",
                    file, tokens.dtype, tokens.shape)
        return None
    if announce:
        log.info("data: cached tokens from %s", file)
    return tokens


def _write(file: Path, tokens: np.ndarray) -> None:
    """Write to a temporary file beside `file`, then rename: readers see all or nothing."""
    handle, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.save(out, tokens, allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache folder may be shared
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on `path` (POSIX), removed afterwards; elsewhere, or where
    the lock file cannot be opened, none. The lock only saves repeated work: the rename keeps
    the cache whole without it (a writer that arrives as the file is removed tokenizes too)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        handle = open(path, "a")  # noqa: SIM115  held for the lock's lifetime
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:  # removed while held: a waiter then finds the cache file written
            with contextlib.suppress(OSError):
                os.unlink(path)
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Reading the files a user hands to ppc (.ppc, .csv, costs and trace JSON).

Every such file is read as bytes, bounded in size, and decoded as UTF-8 here, so a
stray byte ends in one positioned line (`file:line:col: not valid UTF-8 ...`) rather
than a UnicodeDecodeError, whichever reader asked.
"""

from __future__ import annotations

import json
from pathlib import Path

from ppc.errors import InputError, PpcError, SourcePos

__all__ = ["MAX_INPUT_BYTES", "decode", "read_json", "read_text"]

MAX_INPUT_BYTES = 16 * 2**20
"""The largest user file ppc reads (16 MiB; a compute order at the size limit is ~4 MB of CSV)."""


def read_text(path: str | Path, *, error: type[PpcError] = InputError, what: str = "file",
              limit: int = MAX_INPUT_BYTES) -> str:
    """The text of `path`, or one `error` line: missing, unreadable, over `limit` bytes or
    not UTF-8."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise error(f"cannot read {what} {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(data) > limit:
        raise error(f"{path}: larger than {_size(limit)}, too large for a {what}")
    return decode(data, str(path), error=error)


def read_json(path: str | Path, *, error: type[PpcError] = InputError, what: str = "file",
              limit: int = MAX_INPUT_BYTES) -> object:
    """The JSON value in `path`, or one `error` line (as `read_text`, or bad JSON with its
    line and column)."""
    text = read_text(path, error=error, what=what, limit=limit)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise error(f"{path}: not a {what}: JSON nested too deep") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise error(f"{path}: not valid JSON: {exc}") from None


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n // 2**10} KiB"


def decode(data: bytes, path: str, *, error: type[PpcError] = InputError) -> str:
    """UTF-8 text of `data` (a leading byte-order mark dropped); a bad byte raises `error`
    positioned at its line and column (columns count characters, as editors do)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
            pos=_byte_pos(data, exc.start, path),
        ) from None
    return text.removeprefix("\ufeff")


def _byte_pos(data: bytes, offset: int, path: str) -> SourcePos:
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    col = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return SourcePos(path=path, line=line, col=col)

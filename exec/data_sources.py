"""Where `--data` documents come from: one reader per format, each yielding strings.

Formats: a .txt file (one document), .jsonl (one object per line, a text field), .parquet
and .arrow files (a text column; read with pyarrow, batch by batch), and a directory
written by Hugging Face `datasets` (`Dataset.save_to_disk`, or a `DatasetDict`'s, whose
"train" split is read). Each reader checks what it can before the first document (the
file opens, the column exists and holds strings), so a mistake is one RunError line in the
launcher's preflight. pyarrow and datasets are optional (`pip install 'ppc-pipeline[data]'`)
and imported only by the formats that need them.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from ppc.errors import RunError
from ppc.inputs import decode

__all__ = ["DEFAULT_COLUMN", "FORMATS", "check_source", "documents", "is_dataset_dir"]

DEFAULT_COLUMN = "text"
"""The field (.jsonl) or column (.parquet, .arrow, datasets) that holds each document."""
FORMATS = ".txt, .jsonl, .parquet, .arrow or a Hugging Face datasets directory"
INSTALL = "pip install 'ppc-pipeline[data]'"
BATCH_ROWS = 1024
"""Rows read at a time from parquet, arrow and datasets sources."""
_DATASET_MARKERS = ("state.json", "dataset_dict.json")
"""save_to_disk writes state.json (a Dataset) or dataset_dict.json (a DatasetDict)."""


def documents(path: str | None, *, column: str = DEFAULT_COLUMN) -> Iterator[str]:
    """The documents of `path` (None: Python's embedded reference documentation); raises
    RunError for a missing file, an unknown format, a missing column or dependency."""
    if path is None:
        from pydoc_data.topics import topics

        return iter([topics[key] for key in sorted(topics)])
    source = check_source(path)
    if source.is_dir():
        return _dataset_dir(source, column)
    return _READERS[source.suffix.lower()](source, column)


def check_source(path: str) -> Path:
    """`path` as a Path, if it names a file of a known format or a saved dataset directory
    (nothing is opened); else RunError."""
    source = Path(path)
    if source.is_dir():
        if not is_dataset_dir(source):
            raise RunError(f"--data {source} is a directory but not a saved Hugging Face dataset "
                           f"(no {' or '.join(_DATASET_MARKERS)})")
        return source
    if not source.is_file():
        raise RunError(f"data file not found: {path}")
    if source.suffix.lower() not in _READERS:
        raise RunError(f"unsupported data file {path}: expected {FORMATS}")
    return source


def is_dataset_dir(path: Path) -> bool:
    """Whether `path` holds what `save_to_disk` writes."""
    return any((path / marker).is_file() for marker in _DATASET_MARKERS)


def _read(file: Path) -> str:
    """The UTF-8 text of a data file; a bad byte is one positioned RunError line."""
    try:
        data = file.read_bytes()
    except OSError as error:
        raise RunError(f"cannot read data file {file}: {error.strerror or error}") from None
    return decode(data, str(file), error=RunError)


def _txt(file: Path, column: str) -> Iterator[str]:
    return iter([_read(file)])


def _jsonl(file: Path, column: str) -> Iterator[str]:
    docs = []
    for number, line in enumerate(_read(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RunError(f"{file}:{number}: not JSON: {error.msg}") from error
        if not isinstance(record, dict) or not isinstance(record.get(column), str):
            raise RunError(f'{file}:{number}: expected an object with a "{column}" string')
        docs.append(record[column])
    return iter(docs)


def _require(module: str, what: Path):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RunError(f"reading --data {what} needs the {module.split('.')[0]} package: {INSTALL}") from None


def _check_column(names: Iterable[str], types: dict[str, object], column: str, what: Path) -> None:
    """`column` is one of `names` and its type is a string type."""
    names = list(names)
    if column not in names:
        raise RunError(f"--data {what} has no column {column!r} (columns: {', '.join(names) or 'none'}); "
                       f"name the text column with --data-column")
    kind = str(types[column])
    if kind not in ("string", "large_string", "string_view"):
        raise RunError(f"--data {what}: column {column!r} holds {kind}, not text")


def _strings(batches: Iterable[list]) -> Iterator[str]:
    """The non-null values of each batch (a null row is no document)."""
    for batch in batches:
        yield from (text for text in batch if text is not None)


def _parquet(file: Path, column: str) -> Iterator[str]:
    pq = _require("pyarrow.parquet", file)
    try:
        handle = pq.ParquetFile(file)
    except Exception as error:  # noqa: BLE001  pyarrow raises ArrowInvalid, OSError, ...
        raise RunError(f"cannot read --data {file} as parquet: {_first_line(error)}") from None
    schema = handle.schema_arrow
    _check_column(schema.names, {f.name: f.type for f in schema}, column, file)
    batches = handle.iter_batches(batch_size=BATCH_ROWS, columns=[column])
    return _strings(batch.column(0).to_pylist() for batch in batches)


def _arrow(file: Path, column: str) -> Iterator[str]:
    """An Arrow IPC file (random-access "file" format, or the "stream" format that
    `datasets` writes), memory-mapped."""
    pa = _require("pyarrow", file)
    reader = None
    for opener in (pa.ipc.open_file, pa.ipc.open_stream):
        try:
            reader = opener(pa.memory_map(str(file)))
            break
        except Exception as error:  # noqa: BLE001  pyarrow raises ArrowInvalid
            failure = error
    if reader is None:
        raise RunError(f"cannot read --data {file} as Arrow IPC: {_first_line(failure)}")
    schema = reader.schema
    _check_column(schema.names, {f.name: f.type for f in schema}, column, file)
    index = schema.get_field_index(column)
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(reader)
    return _strings(batch.column(index).to_pylist() for batch in batches)


def _dataset_dir(directory: Path, column: str) -> Iterator[str]:
    datasets = _require("datasets", directory)
    try:
        data = datasets.load_from_disk(str(directory))
    except Exception as error:  # noqa: BLE001  datasets raises FileNotFoundError, ValueError, ...
        raise RunError(f"cannot load --data {directory} with datasets: {_first_line(error)}") from None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise RunError(f"--data {directory} has splits {', '.join(data)} but no \"train\": "
                           f"pass one split's directory, e.g. --data {directory / next(iter(data))}")
        data = data["train"]
    features = data.features
    _check_column(data.column_names, {n: getattr(features[n], "dtype", features[n]) for n in features},
                  column, directory)
    rows = data.select_columns([column]).iter(batch_size=BATCH_ROWS)
    return _strings(batch[column] for batch in rows)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


_READERS = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet, ".arrow": _arrow}

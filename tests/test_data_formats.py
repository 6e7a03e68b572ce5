"""`--data` formats (issue 14, item 6): .txt, .jsonl, .parquet, .arrow (IPC file and stream)
and Hugging Face `datasets` directories give the same documents and tokens; what a user can
get wrong (a missing column, a split, a missing package) is one RunError line, and in
`ppc run` one line and exit 2 before any worker starts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ppc
from ppc.exec import launch
from ppc.exec.data import ByteTokenizer, load_data, load_text

from ppc.cli import main
from ppc.errors import RunError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

DOCS = ["The first document.\n", "Zweites Dokument: groß, 漢字.\n", "  third, with spaces  "]
RUN = ["run", "--model", "tiny-llama", "--schedule", "1f1b", "--ranks", "2", "--microbatches", "2",
       "--seq-len", "16", "--steps", "2", "--device", "cpu", "--quiet"]


def _table(column: str = "text", docs: list[str | None] = DOCS):
    return pa.table({column: docs, "id": list(range(len(docs)))})


def _write(tmp: Path, kind: str, *, column: str = "text") -> Path:
    """The DOCS in one format under `tmp`."""
    if kind == "jsonl":
        path = tmp / "c.jsonl"
        path.write_text("".join(json.dumps({column: d}) + "\n" for d in DOCS), encoding="utf-8")
    elif kind == "parquet":
        path = tmp / "c.parquet"
        pq.write_table(_table(column), path)
    elif kind in ("arrow-file", "arrow-stream"):
        path = tmp / f"{kind}.arrow"
        table = _table(column)
        opener = pa.ipc.new_file if kind == "arrow-file" else pa.ipc.new_stream
        with opener(str(path), table.schema) as writer:
            writer.write_table(table)
    elif kind == "dataset":
        path = tmp / "ds"
        datasets.Dataset.from_dict({column: DOCS}).save_to_disk(str(path))
    elif kind == "dataset-dict":
        path = tmp / "dd"
        train = datasets.Dataset.from_dict({column: DOCS})
        other = datasets.Dataset.from_dict({column: ["not the training split"]})
        datasets.DatasetDict({"validation": other, "train": train}).save_to_disk(str(path))
    else:
        raise ValueError(kind)
    return path


KINDS = ["jsonl", "parquet", "arrow-file", "arrow-stream", "dataset", "dataset-dict"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_gives_the_documents_and_their_tokens(kind, tmp_path):
    path = _write(tmp_path, kind)
    assert load_text(str(path)) == DOCS
    data = load_data(str(path), tokenizer=ByteTokenizer(), seq_len=8, cache_dir=tmp_path / "cache")
    expected = list("".join(DOCS).encode("utf-8"))
    assert data.tokens.tolist() == expected
    assert data.num_sequences == len(expected) // 8
    batch = data.microbatches(0, microbatches=2, microbatch_size=2)
    assert batch[0]["input_ids"].dtype.is_floating_point is False
    assert str(batch[0]["input_ids"].dtype) == "torch.int64"  # labels for cross entropy


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "arrow-stream", "dataset"])
def test_data_column_names_another_text_column(kind, tmp_path):
    path = _write(tmp_path, kind, column="body")
    assert load_text(str(path), column="body") == DOCS


def test_null_rows_are_no_documents(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(_table(docs=["a", None, "b"]), path)
    assert load_text(str(path)) == ["a", "b"]


def test_a_txt_file_is_one_document(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(DOCS), encoding="utf-8")
    assert load_text(str(path)) == ["".join(DOCS)]


@pytest.mark.parametrize("kind", ["parquet", "arrow-file", "dataset"])
def test_a_missing_column_names_the_columns(kind, tmp_path):
    path = _write(tmp_path, kind, column="content")
    with pytest.raises(RunError) as info:
        load_text(str(path))
    message = str(info.value)
    assert f"--data {path} has no column 'text' (columns: content" in message
    assert "--data-column" in message


def test_a_column_that_is_not_text_is_named(tmp_path):
    path = _write(tmp_path, "parquet")
    with pytest.raises(RunError, match=r"column 'id' holds int64, not text"):
        load_text(str(path), column="id")


def test_a_dataset_dict_without_train_lists_its_splits(tmp_path):
    path = tmp_path / "dd"
    one = datasets.Dataset.from_dict({"text": DOCS})
    datasets.DatasetDict({"test": one, "validation": one}).save_to_disk(str(path))
    with pytest.raises(RunError) as info:
        load_text(str(path))
    assert str(info.value) == (f'--data {path} has splits test, validation but no "train": '
                               f"pass one split's directory, e.g. --data {path / 'test'}")
    assert load_text(str(path / "validation")) == DOCS  # a split's directory is a dataset


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("notes", None, "is a directory but not a saved Hugging Face dataset (no state.json or dataset_dict.json)"),
        ("bad.parquet", b"not parquet at all", "cannot read --data {path} as parquet"),
        ("bad.arrow", b"not arrow either", "cannot read --data {path} as Arrow IPC"),
        ("c.csv", b"text\nhello\n", "unsupported data file {path}: expected .txt, .jsonl, .parquet, .arrow"),
    ],
)
def test_unreadable_sources_are_one_line(name, content, needle, tmp_path):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(RunError) as info:
        load_text(str(path))
    assert needle.format(path=path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("kind", "module"), [("parquet", "pyarrow"), ("arrow-file", "pyarrow"),
                                              ("dataset", "datasets")])
def test_without_the_optional_package_the_run_says_what_to_install(kind, module, tmp_path, monkeypatch,
                                                                   capsys):
    """`ppc run` exits 2 with one line before any worker starts (the import is made to fail
    as it does where the package is not installed)."""
    path = _write(tmp_path, kind)
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError

    def launched(*args, **kwargs):
        raise AssertionError("the preflight passed and workers were started")

    monkeypatch.setattr(launch, "self_launch", launched)
    with pytest.raises(SystemExit) as exit_info:
        main([*RUN, "--data", str(path), "--data-cache", str(tmp_path / "cache")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"ppc: reading --data {path} needs the {module} package: pip install 'ppc-pipeline[data]'"]


@pytest.mark.slow  # 2 gloo ranks, 2 steps, then the single-process loop (13-22 s on our loaded box)
def test_run_on_parquet_equals_reference_and_tokenizes_once(tmp_path):
    """The launcher tokenizes the parquet file once; both ranks and then `--reference` map
    the cached tokens; the pipeline's losses are the single-process loop's."""
    from pydoc_data.topics import topics

    data, cache = tmp_path / "docs.parquet", tmp_path / "cache"
    pq.write_table(pa.table({"text": [topics[key] for key in sorted(topics)][:20]}), data)
    flags = ["-v", *RUN, "--lr", "1e-3", "--data", str(data), "--data-cache", str(cache)]
    pipe = ppc(*flags, "--metrics", str(tmp_path / "p.jsonl"))
    assert pipe.returncode == 0, pipe.stderr[-2000:]
    assert pipe.stderr.count("data: tokenized once into") == 1  # the launcher's preflight
    assert pipe.stderr.count("data: cached tokens from") == 2  # rank 0, rank 1
    ref = ppc(*flags, "--reference", "--metrics", str(tmp_path / "r.jsonl"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert "tokenized once" not in ref.stderr and "data: cached tokens from" in ref.stderr
    p = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    r = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [x["step"] for x in p] == [1, 2]
    assert [x["loss"] for x in p] == pytest.approx([x["loss"] for x in r], rel=1e-5)

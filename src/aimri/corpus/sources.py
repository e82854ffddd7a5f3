"""Documents from a corpus source: built-in (chat corpus, Python docs), text/JSONL/Parquet
files, `datasets`.

Each source yields plain strings (documents) in a deterministic order for a seed. File sources
go through a seeded, bounded shuffle buffer so big files stream in bounded memory.
Not here: tokenization (see `contexts.py`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from aimri.config import CorpusConfig
from aimri.corpus.builtin import builtin_documents
from aimri.corpus.chat import chat_documents
from aimri.errors import AimriError

SHUFFLE_BUFFER = 10_000
BUILTIN_SOURCES: dict[str, Callable[[int], Iterator[str]]] = {
    "builtin": lambda seed: chat_documents("train", seed),
    "builtin-held-out": lambda seed: chat_documents("held-out", seed),
    "pydoc": builtin_documents,
}
"""Corpora that ship with aimri (no download): the chat corpus's training and held-out splits
(`chat.py`), and Python's own documentation and sources (`builtin.py`)."""
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")


def iter_documents(cfg: CorpusConfig) -> Iterator[str]:
    """Documents of `cfg.source`, non-empty, in a deterministic order for `cfg.seed`."""
    if cfg.source in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[cfg.source](cfg.seed)
    if cfg.source.startswith("hf:"):
        return _shuffled(_hub_dataset(cfg), cfg.seed)
    path = Path(cfg.source).expanduser()
    if not path.exists():
        raise AimriError(
            f"corpus '{cfg.source}' not found: give {', '.join(map(repr, BUILTIN_SOURCES))}, a "
            ".txt/.jsonl/.parquet file or "
            "a folder of them, a saved `datasets` folder, or 'hf:NAME[:CONFIG]'"
        )
    return _shuffled(_file_documents(path, cfg), cfg.seed)


def _file_documents(path: Path, cfg: CorpusConfig) -> Iterator[str]:
    if path.is_dir() and (
        (path / "dataset_info.json").is_file() or (path / "state.json").is_file()
    ):
        yield from _saved_dataset(path, cfg)
        return
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in FILE_SUFFIXES) if path.is_dir() else [path]
    )
    if not files:
        raise AimriError(f"corpus folder '{path}' holds no {'/'.join(FILE_SUFFIXES)} files")
    for f in files:
        reader = {".txt": _text_file, ".jsonl": _jsonl_file, ".parquet": _parquet_file}.get(
            f.suffix
        )
        if reader is None:
            raise AimriError(
                f"corpus file '{f}' has an unknown type '{f.suffix}': use {', '.join(FILE_SUFFIXES)}"
            )
        try:
            yield from reader(f, cfg.text_field)
        except (OSError, UnicodeDecodeError) as e:
            raise AimriError(f"corpus file '{f}' cannot be read ({e}): check the file") from e


def _text_file(path: Path, field: str) -> Iterator[str]:
    """Paragraphs (separated by blank lines) are documents."""
    with open(path, encoding="utf-8") as f:
        para: list[str] = []
        for line in f:
            if line.strip():
                para.append(line)
            elif para:
                yield "".join(para).strip()
                para = []
        if para:
            yield "".join(para).strip()


def _jsonl_file(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise AimriError(f"corpus file '{path}' line {n} is not JSON ({e.msg})") from e
            yield _field(record, field, f"'{path}' line {n}")


def _parquet_file(path: Path, field: str) -> Iterator[str]:
    pq = _optional("pyarrow.parquet", "Parquet corpora")
    table = pq.ParquetFile(path)
    if field not in table.schema_arrow.names:
        raise AimriError(
            f"corpus file '{path}' has no column '{field}' (columns: "
            f"{', '.join(table.schema_arrow.names)}); pass --corpus.text-field"
        )
    for batch in table.iter_batches(columns=[field], batch_size=1024):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))


def _saved_dataset(path: Path, cfg: CorpusConfig) -> Iterator[str]:
    datasets = _optional("datasets", "`datasets` corpora")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            raise AimriError(
                f"dataset '{path}' has no split '{cfg.split}' (splits: {', '.join(ds)})"
            )
        ds = ds[cfg.split]
    yield from _rows(ds, cfg.text_field, str(path))


def _hub_dataset(cfg: CorpusConfig) -> Iterator[str]:
    datasets = _optional("datasets", "Hugging Face datasets")
    name, _, config = cfg.source.removeprefix("hf:").partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=cfg.split)
    except Exception as e:  # datasets raises many types for "not cached and offline"
        raise AimriError(
            f"dataset '{name}' could not be opened ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "it must be in the local cache or the network must be there; or save it with "
            "`save_to_disk` and pass the folder"
        ) from e
    yield from _rows(ds, cfg.text_field, name)


def _rows(ds: Any, field: str, where: str) -> Iterator[str]:
    if field not in ds.column_names:
        raise AimriError(
            f"dataset '{where}' has no column '{field}' (columns: {', '.join(ds.column_names)}); "
            "pass --corpus.text-field"
        )
    for text in ds[field] if len(ds) < 100_000 else (r[field] for r in ds):
        if isinstance(text, str):
            yield text


def _field(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise AimriError(
            f"corpus record at {where} has no text field '{field}': pass --corpus.text-field"
        )
    return record[field]


def _shuffled(docs: Iterable[str], seed: int, size: int = SHUFFLE_BUFFER) -> Iterator[str]:
    """Seeded shuffle through a bounded buffer; drops empty documents."""
    rng = random.Random(seed)
    buf: list[str] = []
    for doc in docs:
        if not doc.strip():
            continue
        buf.append(doc)
        if len(buf) >= size:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def _optional(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise AimriError(f"{what} need an extra: run `pip install 'aimri[data]'`") from e

"""Readers: stream LLaVA records out of JSON arrays, JSON Lines and parquet files.

Each reader yields `SourceRecord`s (the plain dict plus where it came from) and,
when the file itself is broken, one `Reject` naming the file and byte offset.
Readers never hold more than one record (JSON) or one row-group batch (parquet)
in memory, so a 2 GB input costs what one record costs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from medrl.data import rejects

_BOM = b"\xef\xbb\xbf"


@dataclass
class SourceRecord:
    """One input record and its origin."""

    data: Any
    source: str  # the file it came from
    position: int  # 0-based index of the record in that file


Item = Union[SourceRecord, rejects.Reject]


class _CountingReader:
    """File wrapper that counts the bytes handed to the parser (for error offsets)."""

    def __init__(self, fh, start: int = 0):
        self._fh = fh
        self.consumed = start

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self.consumed += len(chunk)
        return chunk


def read_json_array(path: str | os.PathLike, buf_size: int = 64 * 1024) -> Iterator[Item]:
    """Stream the items of a top-level JSON array with ijson (constant memory)."""
    import ijson

    path = Path(path)
    source = str(path)
    with open(path, "rb") as fh:
        start = len(_BOM) if fh.read(len(_BOM)) == _BOM else 0
        fh.seek(start)
        head = fh.read(1 << 16).lstrip()
        fh.seek(start)
        if head and not head.startswith(b"["):
            yield rejects.Reject(
                reason=rejects.INVALID_JSON,
                detail=f"{source}: the top-level JSON value is not an array of records",
                source=source,
                offset=start,
            )
            return
        counter = _CountingReader(fh, start)
        position = 0
        try:
            # use_float: plain floats, not Decimal (faster and JSON/pyarrow friendly).
            for item in ijson.items(counter, "item", use_float=True, buf_size=buf_size):
                yield SourceRecord(item, source, position)
                position += 1
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            # The C parser reads ahead in buffers, so the offset is where the data it
            # had read ends: exact for a truncated file, an upper bound otherwise.
            size = path.stat().st_size
            where = "end of file" if counter.consumed >= size else f"byte {counter.consumed}"
            yield rejects.Reject(
                reason=rejects.INVALID_JSON,
                detail=f"{source}: JSON breaks at or before {where} after {position} good records: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                source=source,
                position=position,
                offset=counter.consumed,
            )


def read_jsonl(path: str | os.PathLike) -> Iterator[Item]:
    """Read JSON Lines; a bad line is one reject with its exact byte offset, later lines still count."""
    path = Path(path)
    source = str(path)
    offset = 0
    position = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line_offset = offset
            offset += len(raw)
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                yield rejects.Reject(
                    reason=rejects.INVALID_JSON,
                    detail=f"{source}: line {lineno} (byte {line_offset}) is not valid JSON: {exc}",
                    source=source,
                    position=position,
                    offset=line_offset,
                )
            else:
                yield SourceRecord(data, source, position)
            position += 1


def read_parquet(path: str | os.PathLike, batch_size: int = 1024) -> Iterator[Item]:
    """Read a LLaVA-format parquet file one record batch at a time."""
    import pyarrow.parquet as pq

    source = str(path)
    position = 0
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            yield SourceRecord(row, source, position)
            position += 1


READERS: dict[str, Callable[..., Iterator[Item]]] = {
    "json": read_json_array,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
}


def register_reader(name: str, reader: Callable[..., Iterator[Item]]) -> None:
    """Add a reader for another input format (selected with `--input-format NAME`)."""
    READERS[name] = reader


def detect_format(path: str | os.PathLike) -> str:
    """Guess the input format from the suffix and, for JSON, the first non-blank byte."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
        while first and not first.strip():
            first = fh.readline(1 << 20)
    first = first.lstrip(_BOM).strip()
    if first.startswith(b"{"):
        try:
            json.loads(first)
            return "jsonl"  # one object per line, misnamed .json
        except ValueError:
            pass  # a pretty-printed object: the JSON reader says it is not an array
    return "json"


def read_records(path: str | os.PathLike, input_format: str = "auto") -> Iterator[Item]:
    """Yield the records of one input file with the reader its format needs."""
    fmt = detect_format(path) if input_format == "auto" else input_format
    if fmt not in READERS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {sorted(READERS)}")
    return READERS[fmt](path)

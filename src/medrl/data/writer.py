"""Parquet output: explicit pyarrow schemas, rows buffered into row groups, files published atomically."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from medrl.atomic import atomic_path
from medrl.data.arrow_rows import RowRef, assemble, image_bytes

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
EMBEDDED_IMAGE = pa.struct([("bytes", pa.binary())])
# No "bytes" field here: verl opens `image["bytes"]` whenever the key exists, even when null.
IMAGE_REFERENCE = pa.struct([("image", pa.string()), ("min_pixels", pa.int64()), ("max_pixels", pa.int64())])
REWARD_MODEL = pa.struct([("style", pa.string()), ("ground_truth", pa.string())])
# Every row has every key: verl's reward loop wants the same extra_info keys in each sample.
EXTRA_INFO = pa.struct([
    ("index", pa.int64()),
    ("id", pa.string()),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("turn", pa.int64()),
    ("n_turns", pa.int64()),
    ("position", pa.int64()),
    ("source", pa.string()),
    ("image", pa.string()),
    ("question", pa.string()),
    ("answer", pa.string()),
])


# extra_info keys the seed formats add (null where a row has none). MeCoVQA, change pairs and
# mixes all write this same union, so every row of a mix has the same keys (verl's reward loop).
FORMAT_EXTRA_FIELDS = (
    ("task_type", pa.string()),       # UniMedVL main_task_type / MeCoVQA kind / change task
    ("region", pa.list_(pa.float64())),   # MeCoVQA Region: the asked-about region as a [0,1] box
    ("region_mask", pa.string()),     # ... and the mask file it came from
    ("mask", pa.string()),            # MeCoVQA Grounding: the answer's mask file
    ("action", pa.list_(pa.float64())),   # change: [cx, cy, scale] of the change box
    ("image2", pa.string()),          # change: origin of the second ("after") image
    ("mix_group", pa.string()),       # mixing: the group the row was drawn from
)


def image_type(image_mode: str) -> pa.DataType:
    """Struct type of one entry of `images` for the given image mode."""
    return IMAGE_REFERENCE if image_mode == "ref" else EMBEDDED_IMAGE


def extra_info_type(extra_fields: Sequence[tuple[str, pa.DataType]] = ()) -> pa.StructType:
    """`EXTRA_INFO` followed by `extra_fields` ((name, type) pairs)."""
    if not extra_fields:
        return EXTRA_INFO
    return pa.struct(list(EXTRA_INFO) + [pa.field(n, t) for n, t in extra_fields])


def rl_schema(image_mode: str = "embed", extra_fields: Sequence[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    """Schema of verl's RL parquet (RLHFDataset); `extra_fields` are appended to extra_info."""
    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("images", pa.list_(image_type(image_mode))),
        ("ability", pa.string()),
        ("reward_model", REWARD_MODEL),
        ("extra_info", extra_info_type(extra_fields)),
    ])


def sft_schema(image_mode: str = "embed", extra_fields: Sequence[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    """Schema of verl's multi-turn SFT parquet (MultiTurnSFTDataset: `messages` + `images`)."""
    return pa.schema([
        ("messages", pa.list_(MESSAGE)),
        ("images", pa.list_(image_type(image_mode))),
        ("data_source", pa.string()),
        ("extra_info", extra_info_type(extra_fields)),
    ])


class RowGroupWriter:
    """Append rows to a parquet file in row groups of `row_group_size`; publish it on clean exit."""

    def __init__(self, path: str | Path, schema: pa.Schema, row_group_size: int = 1000,
                 max_group_bytes: int = 64 << 20):
        self.path = Path(path)
        self.schema = schema
        self.row_group_size = max(1, int(row_group_size))
        # Embedded X-rays can be megabytes each: a byte budget keeps a row group (and memory) bounded.
        self.max_group_bytes = max_group_bytes
        self.rows_written = 0
        self._buffer: list[dict] = []
        self._buffer_bytes = 0
        self._stack = contextlib.ExitStack()
        self._writer: pq.ParquetWriter | None = None
        # Parquet encoding and compression run in a thread: pyarrow releases the GIL there, so a
        # row group is encoded on the other core while the next one's rows are built. At most one
        # row group waits for it (memory stays two row groups).
        self._thread: cf.ThreadPoolExecutor | None = None
        self._pending: cf.Future | None = None

    def __enter__(self) -> "RowGroupWriter":
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._writer = pq.ParquetWriter(tmp, self.schema)
        self._thread = self._stack.enter_context(cf.ThreadPoolExecutor(1, thread_name_prefix="parquet"))
        return self

    def write(self, row: dict[str, Any] | RowRef) -> None:
        """Buffer one row; a full buffer becomes one row group."""
        self._buffer.append(row)
        # A row built in a worker arrives as a RowRef into that worker's Arrow table.
        self._buffer_bytes += row.nbytes if type(row) is RowRef else image_bytes(row)
        if len(self._buffer) >= self.row_group_size or self._buffer_bytes >= self.max_group_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one row group."""
        if not self._buffer:
            return
        if type(self._buffer[0]) is RowRef:
            table = assemble(self._buffer, self.schema)
        else:
            table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        self._wait()
        self._pending = self._thread.submit(self._writer.write_table, table, row_group_size=len(self._buffer))
        self.rows_written += len(self._buffer)
        self._buffer.clear()
        self._buffer_bytes = 0

    def _wait(self) -> None:
        """Wait for the row group being written (its error, if any, is raised here)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self.flush()
                self._wait()
        except BaseException as err:  # the last row group failed: the file is not published
            exc_type, exc, tb = type(err), err, err.__traceback__
            raise
        finally:
            if self._pending is not None:  # leaving on an error: let the write end before closing
                cf.wait([self._pending])
            self._writer.close()
            # atomic_path renames on success and deletes the temp file on error.
            self._stack.__exit__(exc_type, exc, tb)
        return False

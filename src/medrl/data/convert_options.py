"""The options of one conversion run (`medrl.data.convert`), and the hooks a format sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import pyarrow as pa

from medrl.data.length import LengthOptions
from medrl.data.readers import SourceRecord
from medrl.data.records import RecordOptions, RecordResult
from medrl.data.rejects import Reject

HOOKS = ("builder", "reader", "extra_fields", "task_label")  # ConvertOptions fields a format sets, not a user

Builder = Callable[[SourceRecord], RecordResult]
Reader = Callable[[str], Iterator["SourceRecord | Reject"]]


@dataclass
class ConvertOptions:
    """One conversion run."""

    inputs: list[str]
    output_dir: str
    record: RecordOptions = field(default_factory=RecordOptions)
    length: LengthOptions = field(default_factory=LengthOptions)
    input_format: str = "auto"
    dataset_filter: list[str] | None = None
    limit: int | None = None
    shuffle: bool = False
    seed: int = 42
    shuffle_buffer: int = 256
    val_fraction: float = 0.0
    split_name: str | None = None  # write everything to <split_name>.parquet instead of train/val
    row_group_size: int = 512
    workers: int = 1
    strict: bool = False
    progress: bool = True
    # Format hooks (see the module docstring). A builder carries its own RecordOptions.
    builder: Builder | None = None  # None: the LLaVA builder with `record`
    reader: Reader | None = None  # None: read_records(path, input_format); inputs may then be folders
    extra_fields: Sequence[tuple[str, pa.DataType]] = ()  # extra_info columns beyond writer.EXTRA_INFO
    task_label: str | None = None  # summary "task" and progress label (default: record.task)

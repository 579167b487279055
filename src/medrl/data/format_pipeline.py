"""A small sequential conversion loop for the seed formats whose rows carry more than the LLaVA rows.

MeCoVQA regions, change pairs (two images, action vector) and mixes need extra
`extra_info` keys and builders other than `records.build_rows`; everything else
(rejects and their reasons, the train/val split by id hash, prompt-length checks,
parquet writers, the summary file) is the LLaVA pipeline's own code.

Adapter note: `convert.convert` takes neither a record builder nor an output
schema; a `ConvertOptions.builder` hook and `writer.rl_schema(extra_fields=...)`
would let these formats run through it directly and this module would go.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from medrl.atomic import write_json
from medrl.data.convert import ConvertOptions, output_names, val_score
from medrl.data.length import check_length
from medrl.data.readers import SourceRecord
from medrl.data.records import RecordResult, record_dataset, record_id
from medrl.data.rejects import Reject, RejectError, RejectLog
from medrl.data.writer import EXTRA_INFO, MESSAGE, REWARD_MODEL, RowGroupWriter, image_type

# Keys the seed formats add to extra_info (null where a row has none): every row of
# every medrl parquet then has the same keys, which verl's reward loop requires.
FORMAT_EXTRA_FIELDS = [
    ("task_type", pa.string()),       # UniMedVL main_task_type / MeCoVQA kind / change task
    ("region", pa.list_(pa.float64())),   # MeCoVQA Region: the asked-about region as a [0,1] box
    ("region_mask", pa.string()),     # ... and the mask file it came from
    ("mask", pa.string()),            # MeCoVQA Grounding: the answer's mask file
    ("action", pa.list_(pa.float64())),   # change: [cx, cy, scale] of the change box
    ("image2", pa.string()),          # change: origin of the second ("after") image
    ("mix_group", pa.string()),       # mixing: the group the row was drawn from
]
FORMAT_EXTRA_INFO = pa.struct(list(EXTRA_INFO) + [pa.field(n, t) for n, t in FORMAT_EXTRA_FIELDS])


def format_rl_schema(image_mode: str = "embed") -> pa.Schema:
    """verl RL schema with the seed formats' extra_info keys."""
    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("images", pa.list_(image_type(image_mode))),
        ("ability", pa.string()),
        ("reward_model", REWARD_MODEL),
        ("extra_info", FORMAT_EXTRA_INFO),
    ])


def format_sft_schema(image_mode: str = "embed") -> pa.Schema:
    """verl multi-turn SFT schema with the seed formats' extra_info keys."""
    return pa.schema([
        ("messages", pa.list_(MESSAGE)),
        ("images", pa.list_(image_type(image_mode))),
        ("data_source", pa.string()),
        ("extra_info", FORMAT_EXTRA_INFO),
    ])


Builder = Callable[[SourceRecord], RecordResult]


def run_pipeline(items: Iterable[SourceRecord | Reject], build: Builder, opts: ConvertOptions,
                 task_label: str, inputs: list[str] | None = None) -> dict:
    """Build, length-check, split and write rows from `items`; returns the summary (also saved as JSON)."""
    from tqdm import tqdm

    if not 0.0 <= opts.val_fraction < 1.0:
        raise ValueError(f"--val_fraction must be in [0, 1), got {opts.val_fraction}")
    out_dir = Path(opts.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{opts.split_name}_" if opts.split_name else ""
    rejects_path = out_dir / f"{prefix}rejects.jsonl"
    summary_path = out_dir / f"{prefix}summary.json"
    names = output_names(opts)
    mode = opts.record.images.mode
    counts: Counter = Counter()
    dropped: Counter = Counter()
    filtered: Counter = Counter()
    failed = None
    t0 = time.perf_counter()
    writers: dict[str, RowGroupWriter] = {}
    sft_writers: dict[str, RowGroupWriter] = {}
    next_index: Counter = Counter()
    # As in the LLaVA pipeline, the rejects file is published even when --strict discards the parquet.
    log_ctx = RejectLog(rejects_path)
    log = log_ctx.__enter__()
    try:
        with contextlib.ExitStack() as stack:
            for split, name in names.items():
                writers[split] = stack.enter_context(
                    RowGroupWriter(out_dir / name, format_rl_schema(mode), opts.row_group_size))
                if opts.record.sft:
                    sft_writers[split] = stack.enter_context(
                        RowGroupWriter(out_dir / f"sft_{name}", format_sft_schema(mode), opts.row_group_size))
            bar = stack.enter_context(tqdm(desc=f"prepare {task_label}", unit=" rec",
                                           disable=not opts.progress, mininterval=1.0))
            taken = 0
            for item in items:
                counts["records_read"] += 1
                bar.update(1)
                if isinstance(item, Reject):
                    log.add(item)
                    continue
                if opts.dataset_filter and isinstance(item.data, dict) and \
                        record_dataset(item.data, opts.record.dataset_key) not in opts.dataset_filter:
                    filtered["dataset_filter"] += 1
                    continue
                if opts.limit and taken >= opts.limit:
                    filtered["over --limit"] += 1
                    continue
                taken += 1
                rid = record_id(item.data, item.source, item.position) if isinstance(item.data, dict) else None
                try:
                    res = build(item)
                    for row in res.rows:
                        check_length(row, opts.length)
                except RejectError as exc:
                    log.add(Reject(exc.reason, exc.detail, item.source, item.position, rid))
                    continue
                counts["records_converted"] += 1
                dropped.update(res.dropped)
                split = opts.split_name or ("val" if val_score(str(rid)) < opts.val_fraction else "train")
                for row in res.rows:
                    row["extra_info"]["split"] = split
                    row["extra_info"]["index"] = next_index[split]
                    next_index[split] += 1
                    writers[split].write(row)
                for row in res.sft_rows:
                    row["extra_info"]["split"] = split
                    row["extra_info"]["index"] = next_index["sft_" + split]
                    next_index["sft_" + split] += 1
                    sft_writers[split].write(row)
            if opts.strict and log.total:
                raise _Strict(f"--strict: {log.total} record(s) rejected; no parquet written")
    except _Strict as exc:
        failed = str(exc)
    except BaseException as exc:
        log_ctx.__exit__(type(exc), exc, exc.__traceback__)
        raise
    log_ctx.__exit__(None, None, None)
    seconds = time.perf_counter() - t0
    summary = {
        "task": task_label,
        "inputs": [str(p) for p in (inputs if inputs is not None else opts.inputs)],
        "output_dir": str(out_dir),
        "records_read": counts["records_read"],
        "records_converted": counts["records_converted"],
        "records_filtered": dict(filtered),
        "rows_written": {s: w.rows_written for s, w in writers.items()} if not failed else {},
        "sft_rows_written": {s: w.rows_written for s, w in sft_writers.items()} if not failed else {},
        "rejected": log.total,
        "rejects_by_reason": dict(log.counts.most_common()),
        "turns_dropped": dict(dropped),
        "seconds": round(seconds, 3),
        "records_per_s": round(counts["records_read"] / seconds, 1) if seconds > 0 else None,
        "outputs": {s: str(out_dir / n) for s, n in names.items()} if not failed else {},
        "sft_outputs": {s: str(out_dir / f"sft_{n}") for s, n in names.items()} if sft_writers and not failed else {},
        "rejects_file": str(rejects_path),
        "strict_failure": failed,
    }
    write_json(summary_path, summary)
    summary["summary_file"] = str(summary_path)
    return summary


class _Strict(Exception):
    pass


def with_extra(result: RecordResult, **extra) -> RecordResult:
    """Add the same extra_info keys to every row (RL and SFT) of a record's result."""
    for row in result.rows + result.sft_rows:
        row["extra_info"].update(extra)
    return result


def iter_sources(paths: Iterable[str], reader: Callable[[str], Iterator[SourceRecord | Reject]]) -> Iterator:
    """Chain a reader over several input files, failing early on a missing one."""
    paths = list(paths)
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"input not found: {p}")
    for p in paths:
        yield from reader(p)

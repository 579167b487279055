"""The conversion pipeline: read -> filter -> select -> build rows -> length filter -> split -> write.

Memory stays flat in the input size: records stream from the readers, a bounded
number of chunks is in flight in the worker processes, and rows leave in row groups.

Formats whose rows are not plain LLaVA rows (MeCoVQA, change pairs) run through the same
pipeline with their own hooks in `ConvertOptions`: a `reader`, a `builder` (record ->
`RecordResult`; a module-level function or `functools.partial` so worker processes can
receive it) and the `extra_fields` their rows add to extra_info.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gc
import hashlib
import heapq
import random
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pyarrow as pa

from medrl.atomic import write_json
from medrl.data import arrow_rows
from medrl.data.images import forget_references
from medrl.data.length import LengthOptions, length_checks
from medrl.data.readers import SourceRecord, read_records
from medrl.data.records import RecordOptions, RecordResult, build_source_rows, record_dataset, record_id
from medrl.data.rejects import Reject, RejectError, RejectLog
from medrl.data.writer import RowGroupWriter, rl_schema, sft_schema

CHUNK = 64  # records per task sent to a worker process
INLINE_CHUNKS = 4  # chunks converted in the main process before worker processes start
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


class StrictFailure(Exception):
    """--strict and at least one record was rejected: outputs are discarded."""


def val_score(rid: str) -> float:
    """A stable number in [0, 1) from a record id: the train/val split depends on nothing else."""
    return int.from_bytes(hashlib.blake2b(rid.encode("utf-8"), digest_size=8).digest(), "big") / 2.0**64


def _shuffle_key(seed: int, item: SourceRecord) -> int:
    """The record's place in the seeded sample: from its id (else file name and position), never its folder."""
    rid = record_id(item.data, item.source, item.position) if isinstance(item.data, dict) \
        else f"{Path(item.source).name}:{item.position}"
    return int.from_bytes(hashlib.blake2b(f"{seed}:{rid}".encode(), digest_size=8).digest(), "big")


def _stream(opts: ConvertOptions) -> Iterator[SourceRecord | Reject]:
    for path in opts.inputs:
        yield from (opts.reader(path) if opts.reader else read_records(path, opts.input_format))


def _passes_filter(item: SourceRecord, opts: ConvertOptions) -> bool:
    if not opts.dataset_filter:
        return True
    if not isinstance(item.data, dict):
        return True  # let the record builder reject it with its reason
    return record_dataset(item.data, opts.record.dataset_key) in opts.dataset_filter


def _pick_sample(opts: ConvertOptions) -> set[tuple[str, int]]:
    """First pass for --shuffle --limit N: the N records with the smallest seeded hash (O(N) memory)."""
    heap: list[tuple[int, str, int]] = []  # max-heap via negated keys
    for item in _stream(opts):
        if isinstance(item, Reject) or not _passes_filter(item, opts):
            continue
        key = -_shuffle_key(opts.seed, item)
        if len(heap) < opts.limit:
            heapq.heappush(heap, (key, item.source, item.position))
        elif key > heap[0][0]:
            heapq.heapreplace(heap, (key, item.source, item.position))
    return {(s, p) for _, s, p in heap}


def builder_of(opts: ConvertOptions) -> Builder:
    """The run's record builder: `opts.builder`, or the LLaVA builder with `opts.record`."""
    return opts.builder or partial(build_source_rows, opts=opts.record)


def process_chunk(chunk: list[SourceRecord], builder: Builder, length_opts: LengthOptions,
                  schemas: tuple[pa.Schema, pa.Schema | None] | None = None) -> list[tuple]:
    """Worker: build and length-check the rows of a few records; never raises for bad records.

    With `schemas` (RL, SFT) the chunk's rows leave as two Arrow tables (`arrow_rows`): the
    last item is then ("tables", rl table, rl row bytes, sft table, sft row bytes) and each
    record's rows and sft_rows are row counts, which `_unpack` turns back into RowRefs.
    """
    out = []
    for item in chunk:
        source, position = item.source, item.position
        rid = record_id(item.data, source, position) if isinstance(item.data, dict) else None
        try:
            res = builder(item)
        except RejectError as exc:
            out.append(("reject", Reject(exc.reason, exc.detail, source, position, rid)))
            continue
        if not length_opts.active:  # no length filter: every row stays (the common case, no per-row loop)
            out.append(("ok", rid, res.rows, res.sft_rows, res.dropped, []))
            continue
        rows, bad = [], []
        for row, (exc, _) in zip(res.rows, length_checks(res.rows, length_opts)):
            if exc is None:
                rows.append(row)
            else:
                turn = row["extra_info"]["turn"]
                bad.append(Reject(exc.reason, f"turn {turn}: {exc.detail}", source, position, rid))
        sft_rows = res.sft_rows if not bad else []  # the SFT row holds every turn, long ones too
        out.append(("ok", rid, rows, sft_rows, res.dropped, bad))
    if schemas is None:
        return out
    rl = [r for res in out if res[0] == "ok" for r in res[2]]
    sft = [r for res in out if res[0] == "ok" for r in res[3]]
    out = [res if res[0] != "ok" else (*res[:2], len(res[2]), len(res[3]), *res[4:]) for res in out]
    return out + [("tables", *arrow_rows.to_table(rl, schemas[0]), *arrow_rows.to_table(sft, schemas[1]))]


def _unpack(results: list[tuple]) -> list[tuple]:
    """A chunk's results with the row counts of `process_chunk(..., schemas)` turned into RowRefs."""
    if not results or results[-1][0] != "tables":
        return results
    _, rl_table, rl_bytes, sft_table, sft_bytes = results[-1]
    rl, sft = arrow_rows.refs(rl_table, rl_bytes), arrow_rows.refs(sft_table, sft_bytes)
    out, a, b = [], 0, 0
    for res in results[:-1]:
        if res[0] == "ok":
            n_rl, n_sft = res[2], res[3]
            res = (*res[:2], rl[a:a + n_rl], sft[b:b + n_sft], *res[4:])
            a, b = a + n_rl, b + n_sft
        out.append(res)
    return out


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for it in items:
        chunk.append(it)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_chunks(chunks: Iterator[list], opts: ConvertOptions) -> Iterator[list[tuple]]:
    """Process chunks in order, in worker processes with a bounded window (memory stays flat)."""
    builder = builder_of(opts)
    if opts.workers <= 1:
        for chunk in chunks:
            yield process_chunk(chunk, builder, opts.length)
        return
    # Workers send rows back as Arrow tables: unpickling and converting row dicts here
    # made this process the bottleneck (it ran at 0.95x the one-process wall time). The
    # inline chunks take the same form, so a row group never mixes dicts and RowRefs.
    # A RowRef keeps its whole chunk's table alive, so only when rows leave in input order:
    # a shuffle buffer or a val split would hold a row of many chunks each (with embedded
    # X-rays, gigabytes), and there rows travel as dicts, as before.
    in_order = not opts.shuffle and (opts.split_name or not opts.val_fraction)
    schemas = (rl_schema(opts.record.images.mode, opts.extra_fields),
               sft_schema(opts.record.images.mode, opts.extra_fields) if opts.record.sft else None) \
        if in_order else None
    # Small inputs never pay for starting the pool: the first chunks run in this process.
    for _ in range(INLINE_CHUNKS):
        chunk = next(chunks, None)
        if chunk is None:
            return
        yield _unpack(process_chunk(chunk, builder, opts.length, schemas))
    with cf.ProcessPoolExecutor(max_workers=opts.workers) as pool:
        window: deque = deque()
        for chunk in chunks:
            window.append(pool.submit(process_chunk, chunk, builder, opts.length, schemas))
            if len(window) >= 2 * opts.workers:
                yield _unpack(window.popleft().result())
        while window:
            yield _unpack(window.popleft().result())


class _ShuffleBuffer:
    """Seeded bounded shuffle of the output order (verl reshuffles every epoch anyway)."""

    def __init__(self, size: int, seed: int):
        self.size, self.rng, self.items = max(1, size), random.Random(seed), []

    def push(self, item) -> Iterator:
        if self.size == 1:  # no shuffle: randrange(1) is always 0, and the generator is this buffer's own
            yield item
            return
        self.items.append(item)
        if len(self.items) >= self.size:
            i = self.rng.randrange(len(self.items))
            self.items[i], self.items[-1] = self.items[-1], self.items[i]
            yield self.items.pop()

    def drain(self) -> Iterator:
        self.rng.shuffle(self.items)
        yield from self.items
        self.items = []


def output_names(opts: ConvertOptions) -> dict[str, str]:
    """File name of each split's RL (and SFT) parquet."""
    if opts.split_name:
        return {opts.split_name: f"{opts.split_name}.parquet"}
    names = {"train": "train.parquet"}
    if opts.val_fraction > 0:
        names["val"] = "val.parquet"
    return names


GC_GEN0 = 50_000  # allocations between young-generation collections during a conversion (CPython: 700)


@contextlib.contextmanager
def _relaxed_gc() -> Iterator[None]:
    """Fewer garbage collections while converting; the collector's settings come back afterwards.

    Every record makes a few dozen dicts and lists that die young and hold no cycles, so
    CPython's default (a young collection every 700 allocations, and the older ones walking every object
    left from the imports) cost about 9 % of a conversion's CPU (medians of 3 paired runs, 100,000 records,
    --image_mode ref). Cycles (a rejected record's exception and traceback) are still collected,
    every GC_GEN0 allocations. Worker processes are forked with the same settings.
    """
    thresholds, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    gc.freeze()  # what is alive now (modules, the schema) is never walked again
    gc.set_threshold(GC_GEN0, thresholds[1], thresholds[2])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if not frozen_before:  # a caller's own gc.freeze() stays as it was
            gc.unfreeze()


def convert(opts: ConvertOptions) -> dict:
    """Run one conversion; returns the summary (also saved as JSON next to the outputs)."""
    forget_references()  # ref mode remembers each file's verdict for one run, not across runs
    with _relaxed_gc():
        return _convert(opts)


def _convert(opts: ConvertOptions) -> dict:
    from tqdm import tqdm

    if not 0.0 <= opts.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {opts.val_fraction}")
    for path in opts.inputs:
        if not (Path(path).exists() if opts.reader else Path(path).is_file()):
            raise FileNotFoundError(f"input file not found: {path}")
    out_dir = Path(opts.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{opts.split_name}_" if opts.split_name else ""
    rejects_path = out_dir / f"{prefix}rejects.jsonl"
    summary_path = out_dir / f"{prefix}summary.json"
    names = output_names(opts)
    image_mode = opts.record.images.mode
    label = opts.task_label or opts.record.task

    t0 = time.perf_counter()
    sample = _pick_sample(opts) if (opts.shuffle and opts.limit) else None
    counts: Counter = Counter()
    dropped: Counter = Counter()
    filtered: Counter = Counter()
    failed = None

    def accepted() -> Iterator[tuple]:
        taken = 0
        for item in _stream(opts):
            counts["records_read"] += 1
            bar.update(1)
            if isinstance(item, Reject):
                log.add(item)
                continue
            if not _passes_filter(item, opts):
                filtered["dataset_filter"] += 1
                continue
            if sample is not None and (item.source, item.position) not in sample:
                filtered["not in the seeded sample"] += 1
                continue
            if opts.limit and sample is None and taken >= opts.limit:
                filtered["over --limit"] += 1
                continue
            taken += 1
            yield item

    writers: dict[str, RowGroupWriter] = {}
    sft_writers: dict[str, RowGroupWriter] = {}
    # The rejects file is published even when --strict discards the parquet outputs.
    try:
        with RejectLog(rejects_path, keep_on=(StrictFailure,)) as log, contextlib.ExitStack() as stack:
            for split, name in names.items():
                writers[split] = stack.enter_context(
                    RowGroupWriter(out_dir / name, rl_schema(image_mode, opts.extra_fields), opts.row_group_size))
                if opts.record.sft:
                    sft_writers[split] = stack.enter_context(
                        RowGroupWriter(out_dir / f"sft_{name}", sft_schema(image_mode, opts.extra_fields),
                                       opts.row_group_size))
            bar = stack.enter_context(tqdm(desc=f"prepare {label}", unit=" rec",
                                           disable=not opts.progress, mininterval=1.0))
            buffers = {s: _ShuffleBuffer(opts.shuffle_buffer if opts.shuffle else 1, opts.seed) for s in names}

            next_index: Counter = Counter()

            def emit(key: str, writer: RowGroupWriter | None, rows: Iterable[dict]) -> None:
                for row in rows:
                    row["extra_info"]["index"] = next_index[key]  # row number within its file
                    next_index[key] += 1
                    writer.write(row)

            for results in _run_chunks(_chunks(accepted(), CHUNK), opts):
                for res in results:
                    if res[0] == "reject":
                        log.add(res[1])
                        continue
                    _, rid, rows, sft_rows, rec_dropped, bad = res
                    for b in bad:
                        log.add(b)
                    if rec_dropped:
                        dropped.update(rec_dropped)
                    if not rows:  # the length filter took every row: rejected (counted above), not converted
                        continue
                    counts["records_converted"] += 1
                    # val_score is never below 0: without a val fraction the hash is not needed.
                    split = opts.split_name or (
                        "val" if opts.val_fraction > 0 and val_score(str(rid)) < opts.val_fraction else "train")
                    for row in rows + sft_rows:
                        row["extra_info"]["split"] = split
                    emit(split, writers[split], [r for grp in buffers[split].push(rows) for r in grp])
                    emit(f"sft_{split}", sft_writers.get(split), sft_rows)
            for split, buf in buffers.items():
                emit(split, writers[split], [r for grp in buf.drain() for r in grp])
            if opts.strict and log.total:
                raise StrictFailure(f"--strict: {log.total} record(s) rejected; no parquet written")
    except StrictFailure as exc:
        failed = str(exc)

    seconds = time.perf_counter() - t0
    summary = {
        "task": label,
        "inputs": [str(p) for p in opts.inputs],
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
    if opts.builder is None:  # with a format's builder the options alone do not say how rows were made
        summary["options"] = _options_dict(opts)
    write_json(summary_path, summary)
    summary["summary_file"] = str(summary_path)
    return summary


def _options_dict(opts: ConvertOptions) -> dict:
    """The user-set options as plain data (the hooks are code, not settings)."""
    return {k: v for k, v in asdict(opts).items() if k not in HOOKS}

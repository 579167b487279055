"""Input records to built chunks: read, filter, cut into chunks, build rows, in this process or in workers.

`chunk_results` is the one door: it yields each chunk's `Tally` (what happened to input
records while the chunk filled) and its results (`process_chunk`), in input order. With
`--workers N` the chunks are built by `medrl.data.shards` (workers that read the input
themselves) when rows leave in input order, and by a pool of workers that builds row dicts
when a shuffle buffer or a val split holds them back.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
from collections import Counter, deque
from functools import partial
from typing import Iterator

import pyarrow as pa

from medrl.data import arrow_rows
from medrl.data.convert_options import Builder, ConvertOptions
from medrl.data.length import LengthOptions, length_checks
from medrl.data.readers import SourceRecord, read_records
from medrl.data.records import build_source_rows, record_dataset, record_id
from medrl.data.rejects import Reject, RejectError
from medrl.data.shards import ShardedRun
from medrl.data.writer import rl_schema, sft_schema



class Tally:
    """What happened to input records while one chunk filled: read, rejected by the reader, filtered.

    Each reader reject comes with the number of the chunk's records read before it, so the main
    process logs it at its place among the chunk's own rejects: the rejects file is in input
    order whatever the chunk size and the number of workers.
    """

    __slots__ = ("read", "taken", "rejects", "filtered")

    def __init__(self) -> None:
        self.read = self.taken = 0
        self.rejects: list[tuple[int, Reject]] = []
        self.filtered: Counter = Counter()

    def take(self) -> "Tally":
        """This tally's events, leaving it empty for the next chunk."""
        out = Tally()
        out.read, out.taken, out.rejects, out.filtered = self.read, self.taken, self.rejects, self.filtered
        self.read, self.taken, self.rejects, self.filtered = 0, 0, [], Counter()
        return out

CHUNK = 64  # records a worker builds at a time
# With --image_mode ref a row names its image instead of holding it, so chunks can be larger: each
# chunk's Arrow table costs about 0.3 ms to write and read whatever its size (100,000 records on 2
# workers: 22,000 records/s at 64, 28,000 at 256, no better at 512 or 1,024; 2026-12-04).
REF_CHUNK = 256
INLINE_CHUNKS = 4  # chunks a shuffled or split run converts here before its pool starts


def stream(opts: ConvertOptions) -> Iterator[SourceRecord | Reject]:
    """Every input's records (and the readers' rejects), in order."""
    for path in opts.inputs:
        yield from (opts.reader(path) if opts.reader else read_records(path, opts.input_format))


def passes_filter(item: SourceRecord, opts: ConvertOptions) -> bool:
    """The record's dataset is one `--dataset-filter` names (or there is no filter)."""
    if not opts.dataset_filter:
        return True
    if not isinstance(item.data, dict):
        return True  # let the record builder reject it with its reason
    return record_dataset(item.data, opts.record.dataset_key) in opts.dataset_filter


def builder_of(opts: ConvertOptions) -> Builder:
    """The run's record builder: `opts.builder`, or the LLaVA builder with `opts.record`."""
    return opts.builder or partial(build_source_rows, opts=opts.record)


def process_chunk(chunk: list[SourceRecord], builder: Builder, length_opts: LengthOptions,
                  schemas: tuple[pa.Schema, pa.Schema | None] | None = None) -> list[tuple]:
    """Worker: build and length-check the rows of a few records; never raises for bad records.

    With `schemas` (RL, SFT) the chunk's rows leave as two Arrow tables (`arrow_rows`): the
    last item is then ("tables", rl table, rl row bytes, sft table, sft row bytes) and each
    record's rows and sft_rows are row counts, which `unpack` turns back into RowRefs.
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
            out.append(("ok", rid, res.rows, res.sft_rows, res.dropped or None, []))
            continue
        rows, bad = [], []
        for row, (exc, _) in zip(res.rows, length_checks(res.rows, length_opts)):
            if exc is None:
                rows.append(row)
            else:
                turn = row["extra_info"]["turn"]
                bad.append(Reject(exc.reason, f"turn {turn}: {exc.detail}", source, position, rid))
        sft_rows = res.sft_rows if not bad else []  # the SFT row holds every turn, long ones too
        out.append(("ok", rid, rows, sft_rows, res.dropped or None, bad))  # None: no Counter to pickle
    if schemas is None:
        return out
    rl = [r for res in out if res[0] == "ok" for r in res[2]]
    sft = [r for res in out if res[0] == "ok" for r in res[3]]
    out = [res if res[0] != "ok" else (*res[:2], len(res[2]), len(res[3]), *res[4:]) for res in out]
    return out + [("tables", *arrow_rows.to_table(rl, schemas[0]), *arrow_rows.to_table(sft, schemas[1]))]


def unpack(results: list[tuple]) -> list[tuple]:
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


def accepted_records(opts: ConvertOptions, sample: set | None, tally: Tally) -> Iterator[SourceRecord]:
    """The input records that pass the filter, the seeded sample and the limit; `tally` counts the rest."""
    taken = 0
    for item in stream(opts):
        tally.read += 1
        if isinstance(item, Reject):
            tally.rejects.append((tally.taken, item))
            continue
        if not passes_filter(item, opts):
            tally.filtered["dataset_filter"] += 1
            continue
        if sample is not None and (item.source, item.position) not in sample:
            tally.filtered["not in the seeded sample"] += 1
            continue
        if opts.limit and sample is None and taken >= opts.limit:
            tally.filtered["over --limit"] += 1
            continue
        taken += 1
        tally.taken += 1
        yield item


def tallied_chunks(opts: ConvertOptions, sample: set | None) -> Iterator[tuple[Tally, list]]:
    """Chunks of accepted records, each with what happened while it filled; the last one may be empty."""
    size, tally = REF_CHUNK if opts.record.images.mode == "ref" else CHUNK, Tally()
    chunk: list = []
    for item in accepted_records(opts, sample, tally):
        chunk.append(item)
        if len(chunk) >= size:
            yield tally.take(), chunk
            chunk = []
    yield tally.take(), chunk  # also carries what came after the last accepted record


def in_input_order(opts: ConvertOptions) -> bool:
    """Rows leave in input order: no shuffle buffer and no val split holds them back."""
    return not opts.shuffle and bool(opts.split_name or not opts.val_fraction)


def _schemas(opts: ConvertOptions) -> tuple[pa.Schema, pa.Schema | None]:
    mode = opts.record.images.mode
    return rl_schema(mode, opts.extra_fields), sft_schema(mode, opts.extra_fields) if opts.record.sft else None


def chunk_results(opts: ConvertOptions, sample: set | None,
                  stack: contextlib.ExitStack) -> Iterator[tuple[Tally, list[tuple]]]:
    """Each chunk's tally and results, in input order; worker processes start now, inside `stack`."""
    if opts.workers > 1 and in_input_order(opts):
        # Rows travel from the workers as Arrow tables (`arrow_rows`): unpickling and converting
        # row dicts here made this process the bottleneck. A RowRef keeps its whole chunk's table
        # alive, so this runs only when rows leave in input order (a shuffle buffer or a val split
        # would hold rows of many chunks, with embedded X-rays gigabytes).
        schemas = _schemas(opts)
        # pyarrow imports pandas the first time it converts Python objects (0.2 s a process):
        # once here, before the fork, instead of in every worker.
        pa.Table.from_pylist([], schema=schemas[0])
        build = partial(process_chunk, builder=builder_of(opts), length_opts=opts.length, schemas=schemas)
        return iter(stack.enter_context(ShardedRun(partial(tallied_chunks, opts, sample), build, opts.workers)))
    return _local_chunks(opts, sample)


def _local_chunks(opts: ConvertOptions, sample: set | None) -> Iterator[tuple[Tally, list[tuple]]]:
    """`chunk_results` built in this process, or by a pool of workers that builds row dicts."""
    builder = builder_of(opts)
    chunks = tallied_chunks(opts, sample)
    if opts.workers <= 1:
        for tally, chunk in chunks:
            yield tally, process_chunk(chunk, builder, opts.length)
        return
    # Shuffled or split: the pool builds row dicts. Small inputs never pay for starting it: the
    # first chunks run in this process.
    for _ in range(INLINE_CHUNKS):
        item = next(chunks, None)
        if item is None:
            return
        yield item[0], process_chunk(item[1], builder, opts.length)
    with cf.ProcessPoolExecutor(max_workers=opts.workers) as pool:
        window: deque = deque()
        for tally, chunk in chunks:
            if chunk:
                done = pool.submit(process_chunk, chunk, builder, opts.length)
            else:  # the last chunk, holding only what came after the last record
                done = cf.Future()
                done.set_result([])
            window.append((tally, done))
            if len(window) >= 2 * opts.workers:
                tally, done = window.popleft()
                yield tally, done.result()
        while window:
            tally, done = window.popleft()
            yield tally, done.result()

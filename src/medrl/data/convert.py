"""The conversion pipeline: read -> filter -> select -> build rows -> length filter -> split -> write.

Memory stays flat in the input size: records stream from the readers, a bounded
number of chunks is in flight in the worker processes (`medrl.data.chunks`), and rows
leave in row groups.

Formats whose rows are not plain LLaVA rows (MeCoVQA, change pairs) run through the same
pipeline with their own hooks in `ConvertOptions`: a `reader`, a `builder` (record ->
`RecordResult`; a module-level function or `functools.partial` so worker processes can
receive it) and the `extra_fields` their rows add to extra_info.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import heapq
import random
import time
from collections import Counter, deque
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

from medrl.atomic import write_json
from medrl.data.chunks import chunk_results, passes_filter, stream, unpack
# Builder and Reader are re-exported: formats name their hooks' types from here.
from medrl.data.convert_options import HOOKS, Builder, ConvertOptions, Reader  # noqa: F401
from medrl.data.images import forget_references
from medrl.data.readers import SourceRecord
from medrl.data.records import record_id
from medrl.data.rejects import Reject, RejectLog
from medrl.data.writer import RowGroupWriter, rl_schema, sft_schema

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


def _pick_sample(opts: ConvertOptions) -> set[tuple[str, int]]:
    """First pass for --shuffle --limit N: the N records with the smallest seeded hash (O(N) memory)."""
    heap: list[tuple[int, str, int]] = []  # max-heap via negated keys
    for item in stream(opts):
        if isinstance(item, Reject) or not passes_filter(item, opts):
            continue
        key = -_shuffle_key(opts.seed, item)
        if len(heap) < opts.limit:
            heapq.heappush(heap, (key, item.source, item.position))
        elif key > heap[0][0]:
            heapq.heapreplace(heap, (key, item.source, item.position))
    return {(s, p) for _, s, p in heap}


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

    writers: dict[str, RowGroupWriter] = {}
    sft_writers: dict[str, RowGroupWriter] = {}
    # The rejects file is published even when --strict discards the parquet outputs.
    try:
        with contextlib.ExitStack() as workers, RejectLog(rejects_path, keep_on=(StrictFailure,)) as log, \
                contextlib.ExitStack() as stack:
            results = chunk_results(opts, sample, workers)  # forks before the writers' threads start
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

            for tally, chunk in results:
                counts["records_read"] += tally.read
                bar.update(tally.read)
                filtered.update(tally.filtered)
                read_rejects = deque(tally.rejects)  # (records of the chunk before it, reject)
                for i, res in enumerate(unpack(chunk)):
                    while read_rejects and read_rejects[0][0] <= i:  # the reader's, at their place in the input
                        log.add(read_rejects.popleft()[1])
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
                    for row in rows:
                        row["extra_info"]["split"] = split
                    # Without --shuffle the buffer hands each record's rows straight back: skip it.
                    emit(split, writers[split],
                         [r for grp in buffers[split].push(rows) for r in grp] if opts.shuffle else rows)
                    if sft_rows:
                        for row in sft_rows:
                            row["extra_info"]["split"] = split
                        emit(f"sft_{split}", sft_writers[split], sft_rows)
                for _, r in read_rejects:
                    log.add(r)
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

"""`medrl check` at dataset scale: every row from headers and the fast counter, then a verl sample as proof.

1. Scan: worker processes take the parquet a row group at a time (they read it
   themselves, so no row crosses a process boundary) and run every row check; images
   are probed from their header and end (a full decode only where those prove
   nothing), each file once per worker; prompts are counted with `PromptCounter`.
2. Proof: a seeded sample of rows, every row within `margin` tokens of the limit and
   every row the fast path could not count are copied into a small parquet and
   loaded through verl's own `RLHFDataset`; their verl counts must equal the fast
   ones. A difference is a problem of its own and fails the check.

Memory stays flat in the number of rows: workers hold one row group, the main
process holds the problem log (the first `show` rows per problem), a histogram of
lengths and the rows to prove.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrl.data import check_rules as C

BIN = 64  # tokens per histogram bin
INLINE_ROWS = 4096  # smaller files are scanned in this process (no pool start-up)
# Fewer rows to prove are loaded through verl in this process: a worker process spends ~7 s of CPU
# importing verl before its first row, and a row takes milliseconds.
INLINE_PROVE_ROWS = 256
MAX_PROVE = 2000  # near-limit and fallback rows proven through verl at most (a seeded subset beyond)


@dataclass(frozen=True)
class ScanOptions:
    """What every worker needs to scan a row group."""

    path: str
    processor: str | None
    max_prompt_length: int | None
    image_key: str
    prompt_key: str
    show: int
    reward_spec: Any
    margin: int


@dataclass
class UnitResult:
    """One row group's findings."""

    problems: dict
    mixed: C.MixedRows
    routes: dict
    lengths: Counter = field(default_factory=Counter)  # histogram bin -> rows
    longest: tuple[int, int] = (-1, -1)  # (tokens, row)
    counted: dict = field(default_factory=dict)  # row -> fast count, for rows to prove
    near: list = field(default_factory=list)  # rows within margin of the limit
    fallback: dict = field(default_factory=dict)  # row -> why the fast path could not count it
    notes: Counter = field(default_factory=Counter)


_STATE: dict = {}  # per worker process: the counter, image cache, route checker


def _state(opts: ScanOptions) -> dict:
    key = (opts.processor, repr(opts.reward_spec))
    if _STATE.get("key") != key:
        from medrl.data.image_header import ImageChecks
        from medrl.data.prompt_length import PromptCounter

        counter = PromptCounter.from_path(opts.processor) if opts.processor else None
        route_ok, note = C.route_checker(opts.reward_spec)
        _STATE.update(key=key, counter=counter, images=counter.images if counter else ImageChecks(),
                      route_ok=route_ok, route_note=note)
    return _STATE


def _image_problem(images, entry) -> str | None:
    from medrl.data.prompt_length import CountError, Fallback, image_source

    try:
        _, source = image_source(entry)
    except Fallback:
        return None  # http(s): not fetched by a preflight
    except CountError as exc:
        return str(exc)
    return images.check(source).problem


def _columns(names: list[str], opts: ScanOptions) -> list[str]:
    wanted = ["data_source", opts.prompt_key, opts.image_key, "reward_model", "ability", "videos", "audios"]
    cols = [c for c in wanted if c in names]
    if "extra_info" in names:
        cols += ["extra_info.id", "extra_info.index"]
    return cols


def scan_unit(opts: ScanOptions, group: int, first_row: int, prove: frozenset) -> UnitResult:
    """Check the rows of one row group (runs in a worker process)."""
    import pyarrow.parquet as pq

    st = _state(opts)
    if st.get("file", (None,))[0] != opts.path:  # parsing a million-row file's footer per row group costs
        st["file"] = (opts.path, pq.ParquetFile(opts.path))
    pf = st["file"][1]
    try:
        table = pf.read_row_group(group, columns=_columns(pf.schema_arrow.names, opts))
    except (KeyError, ValueError):  # a schema without nested extra_info fields: read it whole
        table = pf.read_row_group(group, columns=[c for c in _columns(pf.schema_arrow.names, opts)
                                                  if not c.startswith("extra_info.")] + ["extra_info"])
    rows = table.to_pylist()
    log, mixed, routes = C.ProblemLog(opts.show), C.MixedRows(opts.show), {}
    res = UnitResult(log.problems, mixed, routes)
    check_image = lambda entry: _image_problem(st["images"], entry)  # noqa: E731
    for k, rec in enumerate(rows):
        row, rid = first_row + k, C.row_id(rec)
        mixed.add(bool(rec.get(opts.image_key)), row, rid)
        for name, detail in C.row_problems(rec, opts.image_key, opts.prompt_key, check_image, st["route_ok"], routes):
            log.flag(name, row, rid, detail)
    counter = st["counter"]
    if counter is None:
        return res
    limit = opts.max_prompt_length
    for k, got in enumerate(counter.count_rows(rows, opts.prompt_key, opts.image_key)):
        row, rid = first_row + k, C.row_id(rows[k])
        if got.fallback:
            res.fallback[row] = got.fallback
            continue
        if got.error:  # verl fails on the row as well (as --full reports it)
            log.flag(C.P_DATASET, row, rid, got.error)
            continue
        n = got.tokens
        res.lengths[n // BIN] += 1
        res.longest = max(res.longest, (n, row))
        if limit and n > limit:
            log.flag(C.P_LENGTH, row, rid, f"{n} tokens > {limit}")
        if row in prove or (limit and abs(n - limit) <= opts.margin):
            res.counted[row] = n
            if limit and abs(n - limit) <= opts.margin:
                res.near.append(row)
    return res


def _units(pf) -> list[tuple[int, int]]:
    """(row group, its first row) of every row group."""
    out, first = [], 0
    for g in range(pf.metadata.num_row_groups):
        out.append((g, first))
        first += pf.metadata.row_group(g).num_rows
    return out


def _run(units, fn, workers: int, progress_total: int, desc: str, progress: bool, inline: bool):
    """Apply fn to every unit, in order, in a process pool (or inline), with a progress bar over rows."""
    from tqdm import tqdm

    bar = tqdm(total=progress_total, desc=desc, unit=" row", disable=not progress, mininterval=1.0)
    try:
        if inline:
            for u in units:
                res, n = fn(*u), u[-1]
                bar.update(n)
                yield res
            return
        # spawn, not fork: a forked child of a process whose torch/OpenMP threads ran can hang.
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            pending = []
            it = iter(units)
            for u in it:  # a bounded window of work in flight: results arrive in order, memory stays flat
                pending.append((pool.submit(fn, *u), u[-1]))
                if len(pending) >= 4 * workers:
                    fut, n = pending.pop(0)
                    yield fut.result()
                    bar.update(n)
            for fut, n in pending:
                yield fut.result()
                bar.update(n)
    finally:
        bar.close()


def _scan(opts: ScanOptions, group: int, first_row: int, prove: frozenset, n_rows: int) -> UnitResult:
    return scan_unit(opts, group, first_row, prove)


def _prove_part(processor: str, part: str, image_key: str, prompt_key: str, n_rows: int) -> list:
    return list(C.verl_load(Path(part), processor, image_key, prompt_key))


def _copy_rows(path: str, rows: list[int], out: Path, units: list[tuple[int, int]]) -> None:
    """Write the given rows of a parquet (in order) to a new parquet with the same schema."""
    import bisect

    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    starts = [first for _, first in units]
    tables = []
    by_group: dict[int, list[int]] = {}
    for r in rows:
        g = bisect.bisect_right(starts, r) - 1
        by_group.setdefault(g, []).append(r - starts[g])
    for g, local in sorted(by_group.items()):
        tables.append(pf.read_row_group(g).take(pa.array(local)))
    pq.write_table(pa.concat_tables(tables) if tables else pf.schema_arrow.empty_table(), out)


def check_fast(path: str | Path, processor: str | None = None, max_prompt_length: int | None = None,
               image_key: str = "images", prompt_key: str = "prompt", show: int = 10, reward_spec: Any = None,
               progress: bool = True, verify: int = 100, margin: int = 32, seed: int = 0,
               workers: int | None = None) -> dict:
    """Check one parquet the fast way (see the module docstring); same report as check_file, plus proof."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    path = Path(path)
    pf = pq.ParquetFile(path)
    n_rows = pf.metadata.num_rows
    log = C.ProblemLog(show)
    notes: list[str] = []
    for why in C.missing_columns(pf.schema_arrow.names, prompt_key):
        log.flag(C.P_COLUMNS, -1, None, why)
    opts = ScanOptions(str(path), str(processor) if processor else None, max_prompt_length, image_key, prompt_key,
                       show, reward_spec, margin)
    rng = random.Random(seed)
    sample = sorted(rng.sample(range(n_rows), min(verify, n_rows))) if processor else []
    units = _units(pf)
    starts = [first for _, first in units] + [n_rows]
    workers = max(1, workers or os.cpu_count() or 1)
    inline = n_rows <= INLINE_ROWS or workers == 1
    sample_set = set(sample)
    work = [(opts, g, first, frozenset(r for r in sample if first <= r < starts[k + 1]), starts[k + 1] - first)
            for k, (g, first) in enumerate(units)]

    mixed, routes, lengths = C.MixedRows(show), {}, Counter()
    counted: dict[int, int] = {}
    near: list[int] = []
    fallback: dict[int, str] = {}
    longest = (-1, -1)
    for res in _run(work, _scan, workers, n_rows, "check rows", progress, inline):
        log.merge(res.problems)
        mixed.merge(res.mixed)
        routes.update(res.routes)
        lengths.update(res.lengths)
        longest = max(longest, res.longest)
        counted.update(res.counted)
        near += res.near
        fallback.update(res.fallback)
    mixed.flag(log)
    route_note = C.route_checker(reward_spec)[1]
    if route_note:
        notes.append(route_note)

    report = {"file": str(path), "rows": n_rows, "problems": log.problems, "notes": notes, "routes": routes,
              "mode": "fast", "seconds": {"scan": round(time.perf_counter() - t0, 3)}}
    if not processor:
        notes.append("no --processor: token length not checked and no row loaded through verl's RLHFDataset")
        return report
    report["lengths"] = _length_summary(lengths, longest)
    remote = [r for r, why in fallback.items() if why == "remote image"]
    if remote:
        notes.append(f"{len(remote)} row(s) with remote (http) images: not fetched, their length is not checked")
    to_count = [r for r, why in fallback.items() if why != "remote image"]
    extra = sorted(set(near) | set(to_count))
    if len(extra) > MAX_PROVE:
        notes.append(f"{len(extra)} rows near the limit or beyond the fast path; {MAX_PROVE} of them (seeded) "
                     "proven through verl: run with --full to load them all")
        extra = sorted(random.Random(seed + 1).sample(extra, MAX_PROVE))
    prove = sorted(sample_set | set(extra))
    t1 = time.perf_counter()
    report["verified"] = _prove(path, prove, counted, fallback, opts, units, workers, progress, log, notes,
                                len(sample), len(near), len(to_count))
    report["seconds"]["prove"] = round(time.perf_counter() - t1, 3)
    return report


def _length_summary(lengths: Counter, longest: tuple[int, int]) -> dict:
    total = sum(lengths.values())
    if not total:
        return {"counted": 0}
    out = {"counted": total, "max": longest[0], "max_row": longest[1]}
    seen = 0
    marks = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
    for b in sorted(lengths):
        seen += lengths[b]
        for name, q in list(marks.items()):
            if seen >= q * total:
                out[f"{name}_below"] = (b + 1) * BIN  # the bin's upper edge: a bound, not the exact quantile
                del marks[name]
    return out


def _prove(path: Path, rows: list[int], counted: dict, fallback: dict, opts: ScanOptions, units, workers: int,
           progress: bool, log: C.ProblemLog, notes: list[str], n_sample: int, n_near: int, n_fallback: int) -> dict:
    """Load `rows` through verl's RLHFDataset; every fast count must equal verl's."""
    if not rows:
        return {"rows": 0, "sample": 0, "near_limit": 0, "fast_path_skipped": 0, "mismatches": 0}
    with tempfile.TemporaryDirectory(prefix="medrl-prove-") as tmp:
        parts = []
        per = len(rows) if len(rows) <= INLINE_PROVE_ROWS else max(1, -(-len(rows) // workers))
        for k in range(0, len(rows), per):
            part = Path(tmp) / f"part{k}.parquet"
            _copy_rows(str(path), rows[k:k + per], part, units)
            parts.append((rows[k:k + per], part))
        work = [(opts.processor, str(p), opts.image_key, opts.prompt_key, len(rs)) for rs, p in parts]
        inline = len(parts) == 1
        results = list(_run(work, _prove_part, workers, len(rows), "prove via verl", progress, inline))
    mismatches = 0
    for (rs, _), res in zip(parts, results):
        for local, rid, n in res:
            row = rs[local]
            if isinstance(n, str):
                if row in counted:  # the fast path counted a row verl cannot load
                    mismatches += 1
                    log.flag(C.P_MISMATCH, row, rid, f"fast count {counted[row]}, verl: {n}")
                elif row in fallback:
                    log.flag(C.P_DATASET, row, rid, n)
                continue  # else: flagged already by the scan (unreadable image, bad count)
            if row in fallback:
                limit = opts.max_prompt_length
                if limit and n > limit:
                    log.flag(C.P_LENGTH, row, rid, f"{n} tokens > {limit} (counted by verl: {fallback[row]})")
            elif counted.get(row) != n:
                mismatches += 1
                log.flag(C.P_MISMATCH, row, rid, f"fast count {counted.get(row)}, verl {n}")
    if mismatches:
        notes.append(f"{mismatches} fast count(s) differ from verl's: the fast path is wrong for this data; "
                     "run `medrl check --full` and report the rows")
    return {"rows": len(rows), "sample": n_sample, "near_limit": n_near, "fast_path_skipped": n_fallback,
            "mismatches": mismatches}

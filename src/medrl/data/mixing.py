"""Dataset mixing in UniMedVL's YAML shape -> one mixed verl parquet, deterministic for a seed.

    dataset_info:                 # UniMedVL's DATASET_INFO: dataset name -> where it lives
      cxr_reports: {jsonl_path: unimedvl.jsonl, data_dir: .}
      meco_ground: {json_path: MeCoVQA-Grounding.json, data_dir: .}
    unimedvl:                     # a block: its key names the format (UniMedVL's class names mean unimedvl)
      task: report                # grounding | report | vqa (llava and unimedvl blocks)
      dataset_names: {reports: [cxr_reports]}          # group -> datasets
      weight: {reports: 3}                              # group -> weight
      num_used_data: {reports: [0, 0]}                  # group -> [start, end) of its lines; [0, 0] = all
      shuffle_lines: true
      shuffle_seed: 42
      vit_image_transform_args: {max_pixels: 2_007_040} # pixel limits of this block's images
    mecovqa:
      dataset_names: {grounding: [meco_ground]}
      weight: {grounding: 1}

Formats (block key, or `format:` inside a block): unimedvl, llava, mecovqa, change,
verl (an already converted parquet). Each group's lines are sliced by
`num_used_data` (rejected lines count as lines), converted with its format's own
builder (rejects counted by reason), shuffled with `shuffle_seed` when
`shuffle_lines`, and `round(total * weight / sum(weights))` rows are taken
(largest remainders, so the counts add up to `total`). `total` defaults to the
largest mix that repeats no row; a larger `--total` cycles through a group again
(each cycle reshuffled) and says so. The mixed rows are then interleaved by a
seeded shuffle. Same YAML, data and seed -> the same parquet, row for row.

A block's `task` defaults to report for unimedvl (as `prepare unimedvl`) and to
grounding for llava. `image_transform_args` (UniMedVL's VAE side, for image outputs)
is accepted and ignored. Each group is converted into a temporary parquet; the rows
finally taken are held in memory once, while they are interleaved and written.
"""

from __future__ import annotations

import math
import random
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from medrl.atomic import atomic_path, write_json
from medrl.data.convert import Builder
from medrl.data.images import ImageOptions
from medrl.data.length import LengthOptions, check_length
from medrl.data.readers import read_records
from medrl.data.records import RecordOptions, build_source_rows, record_id
from medrl.data.rejects import Reject, RejectError, RejectLog
from medrl.data.writer import FORMAT_EXTRA_FIELDS, RowGroupWriter, rl_schema

FORMATS = ("unimedvl", "llava", "mecovqa", "change", "verl")
PATH_KEYS = ("path", "jsonl_path", "json_path", "data_path", "parquet_path", "arrow_path")
BLOCK_KEYS = {"format", "task", "dataset_names", "weight", "num_used_data", "is_mandatory", "shuffle_lines",
              "shuffle_seed", "image_transform_args", "vit_image_transform_args", "max_pixels", "min_pixels",
              "data_source", "tasks", "split", "min_area", "complex_task", "region_task", "kind", "instruction"}


class MixError(ValueError):
    """The mix YAML is wrong; the message names the file and the key."""


@dataclass
class DatasetRef:
    name: str
    path: str
    image_root: str | None
    format: str


@dataclass
class Group:
    name: str
    block: str
    format: str
    datasets: list[DatasetRef]
    weight: float
    start: int
    end: int  # 0 = to the end
    shuffle_lines: bool
    shuffle_seed: int
    mandatory: bool
    images: ImageOptions
    options: dict = field(default_factory=dict)


def _num_used(value: Any, where: str) -> tuple[int, int]:
    if value is None:
        return 0, 0
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v >= 0 for v in value)):
        raise MixError(f"{where}: num_used_data must be [start, end] with non-negative integers, got {value!r}")
    start, end = value
    if end and end <= start:
        raise MixError(f"{where}: num_used_data [start, end] needs end > start (or end 0 = all), got {value!r}")
    return start, end


def _dataset_ref(name: str, info: dict, block: str, fmt: str, base: Path, where: str) -> DatasetRef:
    entry = info.get(block, {}).get(name) if isinstance(info.get(block), dict) else None
    entry = entry if isinstance(entry, dict) else info.get(name)
    if isinstance(entry, str):
        entry = {"path": entry}
    if entry is None:
        cand = base / name
        if cand.exists():
            return DatasetRef(name, str(cand), None, fmt)
        raise MixError(f"{where}: dataset {name!r} is neither in dataset_info nor a path next to the YAML")
    if not isinstance(entry, dict):
        raise MixError(f"{where}: dataset_info[{name!r}] must be a mapping with a path")
    path = next((entry[k] for k in PATH_KEYS if entry.get(k)), None)
    if not path:
        raise MixError(f"{where}: dataset_info[{name!r}] has none of {PATH_KEYS}")
    root = entry.get("data_dir", entry.get("image_root"))
    p = Path(path) if Path(path).is_absolute() else base / path
    r = None if root is None else str(Path(root) if Path(root).is_absolute() else base / root)
    return DatasetRef(name, str(p), r, str(entry.get("format", fmt)))


def load_mix(path: str | Path, image_mode: str = "embed") -> list[Group]:
    """Parse a mix YAML into groups (raises MixError naming the file and key)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MixError(f"{path}: cannot read the mix YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise MixError(f"{path}: top level must be a mapping of blocks")
    info = raw.get("dataset_info") or {}
    base = path.parent
    groups: list[Group] = []
    seen: dict[str, str] = {}
    for block, spec in raw.items():
        if block in ("dataset_info", "total", "seed"):
            continue
        where = f"{path}: {block}"
        if not isinstance(spec, dict):
            raise MixError(f"{where}: a block must be a mapping")
        unknown = sorted(set(spec) - BLOCK_KEYS)
        if unknown:
            raise MixError(f"{where}: unknown key(s) {unknown}; known: {sorted(BLOCK_KEYS)}")
        fmt = str(spec.get("format", block if block in FORMATS else "unimedvl"))
        if fmt not in FORMATS:
            raise MixError(f"{where}: format {fmt!r} is not one of {FORMATS}")
        names = spec.get("dataset_names")
        if not isinstance(names, dict) or not names:
            raise MixError(f"{where}: dataset_names must map group names to lists of datasets")
        weights = spec.get("weight") or {}
        used = spec.get("num_used_data") or {}
        for key, table in (("weight", weights), ("num_used_data", used)):
            if not isinstance(table, dict):
                raise MixError(f"{where}: {key} must map group names to values")
            extra = sorted(set(table) - set(names))
            if extra:
                raise MixError(f"{where}: {key} names group(s) {extra} not in dataset_names {sorted(names)}")
        vit = spec.get("vit_image_transform_args") or {}
        max_px = vit.get("max_pixels", spec.get("max_pixels"))
        min_px = vit.get("min_pixels", spec.get("min_pixels"))
        images = ImageOptions(mode=image_mode, max_pixels=int(max_px) if max_px else None,
                              **({"min_pixels": int(min_px)} if min_px else {}))
        options = {k: spec[k] for k in ("task", "data_source", "tasks", "split", "min_area", "complex_task",
                                        "region_task", "kind", "instruction") if k in spec}
        for gname, dnames in names.items():
            gwhere = f"{where}: group {gname!r}"
            if gname in seen:
                raise MixError(f"{gwhere}: group name also used in block {seen[gname]!r}")
            seen[gname] = block
            if isinstance(dnames, str):
                dnames = [dnames]
            if not isinstance(dnames, list) or not dnames:
                raise MixError(f"{gwhere}: needs a list of dataset names")
            w = weights.get(gname, 1)
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 or not math.isfinite(w):
                raise MixError(f"{gwhere}: weight must be a non-negative number, got {w!r}")
            start, end = _num_used(used.get(gname), gwhere)
            groups.append(Group(
                name=str(gname), block=str(block), format=fmt,
                datasets=[_dataset_ref(str(d), info, block, fmt, base, gwhere) for d in dnames],
                weight=float(w), start=start, end=end, shuffle_lines=bool(spec.get("shuffle_lines", False)),
                shuffle_seed=int(spec.get("shuffle_seed", 42)), mandatory=bool(spec.get("is_mandatory", True)),
                images=images, options=options))
    if not groups:
        raise MixError(f"{path}: no dataset groups")
    if sum(g.weight for g in groups) <= 0:
        raise MixError(f"{path}: every weight is 0")
    return groups


def _producer(group: Group, ds: DatasetRef, rec: RecordOptions, out_dir: Path) -> tuple[Iterator, Builder | None]:
    """(items of one dataset, row builder) for the group's format."""
    o = group.options
    rec = replace(rec, images=replace(group.images, image_root=ds.image_root),
                  **({"data_source": o["data_source"]} if o.get("data_source") else {}),
                  **({"instruction": bool(o["instruction"])} if "instruction" in o else {}))
    if ds.format == "verl":
        return iter(()), None
    if ds.format in ("llava", "unimedvl"):
        from medrl.data.unimedvl import read_unimedvl

        default = "report" if ds.format == "unimedvl" else rec.task  # as `prepare unimedvl` / `prepare convert`
        rec = replace(rec, task=o.get("task", default))
        items = read_unimedvl(ds.path) if ds.format == "unimedvl" else read_records(ds.path)
        return items, partial(build_source_rows, opts=rec)
    if ds.format == "mecovqa":
        from medrl.data.mecovqa import MecoOptions, build_meco_rows

        meco = MecoOptions(**{k: o[k] for k in ("kind", "min_area", "complex_task", "region_task") if k in o},
                           mask_root=ds.image_root)
        return read_records(ds.path), partial(build_meco_rows, meco=meco, rec_opts=rec)
    from medrl.data.change import ChangeOptions, build_change_rows, read_arrow, splits_of

    change = ChangeOptions(tuple(o.get("tasks", ("grounding", "caption"))))
    split = o.get("split") or ("train" if splits_of(ds.path) else None)
    return read_arrow(ds.path, split), partial(build_change_rows, opts=change, rec_opts=rec, out_dir=out_dir)


def _verl_rows(path: str) -> Iterator[dict]:
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=256):
        yield from batch.to_pylist()


def _check_foreign(row: dict, mode: str) -> None:
    """A passed-through verl row must carry its images the way this mix stores them (else nulls would hide it)."""
    key = "image" if mode == "ref" else "bytes"
    for img in row.get("images") or []:
        if not isinstance(img, dict) or not img.get(key):
            raise pa.ArrowInvalid(f"image entry without {key!r}: keys {sorted(img) if isinstance(img, dict) else img}")


def convert_group(group: Group, rec: RecordOptions, length: LengthOptions, target: Path, out_dir: Path,
                  log: RejectLog) -> dict:
    """Convert a group's sliced lines into the parquet `target`; returns the counts."""
    schema = rl_schema(group.images.mode, FORMAT_EXTRA_FIELDS)
    line = 0
    counts = Counter()
    with RowGroupWriter(target, schema, 256) as w:
        for ds in group.datasets:
            if not Path(ds.path).exists():
                raise MixError(f"group {group.name!r}: dataset {ds.name!r}: {ds.path} not found")
            items, build = _producer(group, ds, rec, out_dir)
            source = _verl_rows(ds.path) if build is None else items
            for item in source:
                line += 1
                if line <= group.start or (group.end and line > group.end):
                    continue
                counts["lines"] += 1
                if isinstance(item, Reject):
                    log.add(item)
                    counts["rejected"] += 1
                    continue
                try:
                    if build is None:
                        rows = [item]
                    else:
                        rows = build(item).rows
                        for row in rows:
                            check_length(row, length)
                except RejectError as exc:
                    rid = record_id(item.data, item.source, item.position) if isinstance(item.data, dict) else None
                    log.add(Reject(exc.reason, f"[{group.name}] {exc.detail}", item.source, item.position, rid))
                    counts["rejected"] += 1
                    continue
                for row in rows:
                    row["extra_info"] = {**(row.get("extra_info") or {}), "mix_group": group.name}
                    try:
                        if build is None:  # a foreign row that does not fit the schema fails here, by name
                            _check_foreign(row, group.images.mode)
                            pa.Table.from_pylist([row], schema=schema)
                        w.write(row)
                    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
                        raise MixError(f"group {group.name!r}: a row of {ds.path} does not fit medrl's RL schema "
                                       f"(images in {group.images.mode!r} mode?): {exc}") from exc
    counts["rows"] = w.rows_written
    return dict(counts)


def allocate(weights: list[float], available: list[int], total: int | None) -> list[int]:
    """Rows per group: largest-remainder shares of `total` (default: the largest mix with no repeats)."""
    s = sum(weights)
    shares = [w / s for w in weights]
    if total is None:
        caps = [math.floor(a / p + 1e-9) for a, p in zip(available, shares) if p > 0]
        total = min(caps) if caps else 0
    raw = [total * p for p in shares]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _pick(n_avail: int, n_take: int, group: Group) -> list[int]:
    """Which of a group's rows are taken (cycling, each cycle reshuffled, when n_take > n_avail)."""
    out: list[int] = []
    cycle = 0
    while len(out) < n_take and n_avail:
        order = list(range(n_avail))
        if group.shuffle_lines:
            random.Random(f"{group.shuffle_seed}:{group.name}:{cycle}").shuffle(order)
        out += order[: n_take - len(out)]
        cycle += 1
    return out


def _set_extra(table: pa.Table, updates: dict[str, pa.Array]) -> pa.Table:
    col = table.column("extra_info").combine_chunks()
    names = [col.type.field(i).name for i in range(col.type.num_fields)]
    arrays = [updates.get(n, col.field(i)) for i, n in enumerate(names)]
    new = pa.StructArray.from_arrays(arrays, fields=list(col.type))
    return table.set_column(table.schema.get_field_index("extra_info"), "extra_info", new)


def mix(config: str | Path, output: str | Path, total: int | None = None, seed: int | None = None,
        record: RecordOptions | None = None, length: LengthOptions | None = None, image_mode: str = "embed",
        allow_repeat: bool = True, progress: bool = True) -> dict:
    """Build one mixed parquet from a mix YAML; returns the summary (saved beside it as <name>_summary.json)."""
    groups = load_mix(config, image_mode)
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    total = total if total is not None else raw.get("total")
    seed = seed if seed is not None else int(raw.get("seed", groups[0].shuffle_seed))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"\.parquet$", "", output.name)
    log_path = output.with_name(f"{stem}_rejects.jsonl")
    with RejectLog(log_path, keep_on=(MixError,)) as log:  # the rejects say why a group came out empty
        stats, live, take = _build(groups, str(config), output, stem, total, seed, record or RecordOptions(),
                                   length or LengthOptions(), allow_repeat, progress, log)
    n_total = sum(take)
    wsum = sum(g.weight for g, _, _ in live)
    taken = dict(zip((g.name for g, _, _ in live), take))
    table_rows = []
    for g, _, c in stats:
        k = taken.get(g.name, 0)
        table_rows.append({
            "group": g.name, "format": g.format, "datasets": [d.name for d in g.datasets], "weight": g.weight,
            "target_share": g.weight / wsum if g.name in taken else 0.0, "lines": c.get("lines", 0),
            "rejected": c.get("rejected", 0), "rows_available": c.get("rows", 0), "rows_taken": k,
            "repeated_rows": max(0, k - c.get("rows", 0)), "realised_share": k / n_total if n_total else 0.0})
    summary = {"config": str(config), "output": str(output), "rows": n_total, "seed": seed,
               "groups": table_rows, "rejected": log.total, "rejects_by_reason": dict(log.counts.most_common()),
               "rejects_file": str(log_path)}
    write_json(output.with_name(f"{stem}_summary.json"), summary)
    return summary


def _build(groups: list[Group], config: str, output: Path, stem: str, total: int | None, seed: int,
           record: RecordOptions, length: LengthOptions, allow_repeat: bool, progress: bool,
           log: RejectLog) -> tuple[list, list, list[int]]:
    """Convert every group, allocate, take, interleave and write; returns (stats, live groups, rows taken)."""
    from tqdm import tqdm

    stats = []
    with tempfile.TemporaryDirectory(prefix=".mix-", dir=output.parent) as tmpdir:
        tmp = Path(tmpdir)
        for k, g in enumerate(tqdm(groups, desc="mix: convert groups", unit=" group", disable=not progress)):
            path = tmp / f"group_{k}.parquet"
            counts = convert_group(g, record, length, path, output.parent, log)
            if counts.get("rows", 0) == 0 and g.weight > 0 and g.mandatory:
                raise MixError(f"{config}: group {g.name!r} (is_mandatory) produced no rows "
                               f"({counts.get('lines', 0)} lines, {counts.get('rejected', 0)} rejected; "
                               f"reasons in {log.path})")
            stats.append((g, path, counts))
        live = [(g, p, c) for g, p, c in stats if g.weight > 0 and c.get("rows", 0) > 0]
        if not live:
            raise MixError(f"{config}: no group produced rows")
        take = allocate([g.weight for g, _, _ in live], [c["rows"] for _, _, c in live], total)
        parts = []
        for (g, p, c), n in zip(live, take):
            if n > c["rows"] and not allow_repeat:
                raise MixError(f"group {g.name!r}: {n} rows wanted, {c['rows']} available and repeats disallowed")
            parts.append(pq.read_table(p).take(pa.array(_pick(c["rows"], n, g), pa.int64())))
        mixed = pa.concat_tables(parts)
        order = list(range(mixed.num_rows))
        random.Random(f"mix:{seed}").shuffle(order)
        mixed = mixed.take(pa.array(order, pa.int64()))
        n = mixed.num_rows
        mixed = _set_extra(mixed, {"index": pa.array(range(n), pa.int64()), "split": pa.array([stem] * n)})
        with atomic_path(output) as t:
            pq.write_table(mixed, t, row_group_size=256)
    return stats, live, take

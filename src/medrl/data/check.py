"""`medrl check`: preflight a verl RL parquet before it reaches a GPU job.

Each row is checked for the problems that otherwise surface deep inside a run:
`<image>` count vs image count, unreadable images, ground truths that do not
parse, data sources without a reward route, rows with and without images mixed,
and (with the model's processor) the exact prompt length against
`data.max_prompt_length`.

Two ways to run it. The default (`check_fast`) reads images' headers and counts
tokens with the fast counter in worker processes, then loads a seeded sample of
rows (and every row near the limit) through verl's `RLHFDataset` and fails if any
count differs. `full=True` (`--full`) decodes every image and loads every row
through verl, as the first version did.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from medrl.data.records import IMAGE_TOKEN

P_PLACEHOLDER = "<image> count differs from image count"
P_IMAGE = "unreadable image"
P_TRUTH = "ground truth does not parse"
P_ROUTE = "data_source has no reward route"
P_MIXED = "rows with and without images mixed"
P_LENGTH = "prompt over max_prompt_length"
P_DATASET = "verl RLHFDataset could not load the row"
P_COLUMNS = "missing column"
P_MISMATCH = "fast count differs from verl's"


class ProblemLog:
    """Problems found, by name: how many rows, the first `show` of them, one example each."""

    def __init__(self, show: int = 10):
        self.show = show
        self.problems: dict[str, dict] = {}

    def flag(self, name: str, row: int, rid: Any, detail: str) -> None:
        """Record one row with a problem."""
        p = self.problems.setdefault(name, {"count": 0, "rows": [], "ids": [], "example": ""})
        p["count"] += 1
        if len(p["rows"]) < self.show:
            p["rows"].append(row)
            p["ids"].append(rid)
        if not p["example"]:
            p["example"] = f"row {row}: {detail}"

    def merge(self, other: dict[str, dict]) -> None:
        """Add another log's problems (of later rows)."""
        for name, q in other.items():
            p = self.problems.setdefault(name, {"count": 0, "rows": [], "ids": [], "example": ""})
            p["count"] += q["count"]
            room = self.show - len(p["rows"])
            p["rows"] += q["rows"][:room]
            p["ids"] += q["ids"][:room]
            p["example"] = p["example"] or q["example"]


def row_id(rec: dict) -> Any:
    """The id a report shows for a row: extra_info.id, else extra_info.index."""
    extra = rec.get("extra_info") or {}
    return extra.get("id", extra.get("index")) if isinstance(extra, dict) else None


def row_problems(rec: dict, image_key: str, prompt_key: str, image_problem, route_ok, routes: dict) -> list:
    """(problem, detail) pairs of one row; `image_problem(entry)` says why an image would not load."""
    out = []
    images = rec.get(image_key) or []
    prompt = rec.get(prompt_key) or []
    n_tok = sum(str(m.get("content", "")).count(IMAGE_TOKEN) for m in prompt if isinstance(m, dict))
    if n_tok != len(images):
        out.append((P_PLACEHOLDER, f"{n_tok} <image> for {len(images)} image(s)"))
    for k, img in enumerate(images):
        why = image_problem(img)
        if why:
            out.append((P_IMAGE, f"image {k}: {why}"))
            break
    rm = rec.get("reward_model") or {}
    ds = str(rec.get("data_source"))
    if "grounding" in str(rec.get("ability", "")) or "grounding" in ds:
        why = truth_problem(rm.get("ground_truth") if isinstance(rm, dict) else None)
        if why:
            out.append((P_TRUTH, why))
    if route_ok is not None:
        if ds not in routes:
            routes[ds] = route_ok(ds)
        if not routes[ds]:
            out.append((P_ROUTE, f"data_source {ds!r}"))
    return out


class MixedRows:
    """Counts rows with and without images, keeping the first few of each (memory flat in rows)."""

    def __init__(self, show: int = 10):
        self.show = show
        self.seen = {True: [0, []], False: [0, []]}

    def add(self, has_images: bool, row: int, rid: Any) -> None:
        """Note one row."""
        n, first = self.seen[has_images]
        self.seen[has_images][0] = n + 1
        if len(first) < self.show:
            first.append((row, rid))

    def merge(self, other: "MixedRows") -> None:
        """Add another counter's (later) rows."""
        for key in (True, False):
            self.seen[key][0] += other.seen[key][0]
            self.seen[key][1] += other.seen[key][1][: self.show - len(self.seen[key][1])]

    def flag(self, log: ProblemLog) -> None:
        """Flag the minority kind when both kinds are present."""
        (n_with, first_with), (n_without, first_without) = self.seen[True], self.seen[False]
        if not (n_with and n_without):
            return
        minority, first = (n_without, first_without) if n_without <= n_with else (n_with, first_with)
        detail = f"{n_with} rows with images, {n_without} without"
        for r, rid in first:
            log.flag(P_MIXED, r, rid, detail)
        log.problems[P_MIXED]["count"] = minority


def _image_problem(img: Any) -> str | None:
    """Why one `images` entry would not load, or None."""
    from PIL import Image

    try:
        if isinstance(img, dict) and img.get("bytes"):
            Image.open(io.BytesIO(img["bytes"])).load()
        elif isinstance(img, dict) and img.get("image"):
            ref = str(img["image"])
            path = ref[len("file://"):] if ref.startswith("file://") else ref
            if "://" in path:
                return None  # http(s) and similar: not fetched by a preflight
            if not Path(path).is_file():
                return f"file not found: {path}"
            Image.open(path).load()
        else:
            return f"entry has neither bytes nor image: {sorted(img) if isinstance(img, dict) else type(img).__name__}"
    except Exception as exc:  # PIL raises many types for corrupt data; all mean "unreadable"
        return f"{type(exc).__name__}: {exc}"
    return None


def truth_problem(ground_truth: Any) -> str | None:
    """Why a grounding ground truth is not a JSON list of [x1, y1, x2, y2] boxes in [0, 1], or None."""
    if not isinstance(ground_truth, str):
        return f"ground_truth is {type(ground_truth).__name__}, expected a JSON string"
    try:
        boxes = json.loads(ground_truth)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not isinstance(boxes, list):
        return "not a list of boxes"
    for b in boxes:
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                             for v in b)):
            return f"box {b!r} is not 4 numbers"
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in b):
            return f"box {b!r} is not within [0, 1]"
        if b[2] < b[0] or b[3] < b[1]:
            return f"box {b!r} has x2 < x1 or y2 < y1"
    return None


def route_checker(spec: Any):
    """(data_source -> has a reward route, or None; a note when routes cannot be checked)."""
    try:
        from medrl.rewards.compose import has_route
    except ImportError as exc:  # the rewards package is optional for a data-only install
        return None, f"reward routes not checked: {exc}"
    return (lambda ds: has_route(ds, spec)), None


def check_file(path: str | Path, processor: str | None = None, max_prompt_length: int | None = None,
               image_key: str = "images", prompt_key: str = "prompt", show: int = 10,
               reward_spec: Any = None, progress: bool = True, full: bool = False, **fast) -> dict:
    """Check one parquet; returns {"file", "rows", "problems": {name: {count, rows, ids, example}}, "notes", ...}.

    `full`: decode every image and load every row through verl (slow). Otherwise the fast
    path runs; `fast` holds its options (verify, margin, seed, workers: see check_fast).
    """
    if not full:
        from medrl.data.check_fast import check_fast

        return check_fast(path, processor=processor, max_prompt_length=max_prompt_length, image_key=image_key,
                          prompt_key=prompt_key, show=show, reward_spec=reward_spec, progress=progress, **fast)
    import pyarrow.parquet as pq
    from tqdm import tqdm

    path = Path(path)
    log = ProblemLog(show)
    notes: list[str] = []
    pf = pq.ParquetFile(path)
    n_rows = pf.metadata.num_rows
    for why in missing_columns(pf.schema_arrow.names, prompt_key):
        log.flag(P_COLUMNS, -1, None, why)
    route_ok, note = route_checker(reward_spec)
    if note:
        notes.append(note)
    routes: dict[str, bool] = {}
    mixed = MixedRows(show)
    row = 0
    bar = tqdm(total=n_rows, desc="check rows", unit=" row", disable=not progress, mininterval=1.0)
    for batch in pf.iter_batches(batch_size=256):
        for rec in batch.to_pylist():
            rid = row_id(rec)
            mixed.add(bool(rec.get(image_key)), row, rid)
            for name, detail in row_problems(rec, image_key, prompt_key, _image_problem, route_ok, routes):
                log.flag(name, row, rid, detail)
            row += 1
            bar.update(1)
    bar.close()
    mixed.flag(log)

    if processor:
        _check_with_verl(path, processor, max_prompt_length, image_key, prompt_key, log.flag, progress)
    else:
        notes.append("no --processor: rows not loaded through verl's RLHFDataset, token length not checked")
    return {"file": str(path), "rows": n_rows, "problems": log.problems, "notes": notes, "routes": routes,
            "mode": "full"}


def missing_columns(names: list[str], prompt_key: str) -> list[str]:
    """Why the file lacks a column every row needs (one line each)."""
    return [f"no {col!r} column (columns: {sorted(names)})" for col in ("data_source", prompt_key, "reward_model")
            if col not in names]


def _check_with_verl(path: Path, processor_path: str, max_prompt_length: int | None, image_key: str,
                     prompt_key: str, flag, progress: bool) -> None:
    """Load every row through verl's RLHFDataset and measure its exact prompt length."""
    for i, rid, n in verl_load(path, processor_path, image_key, prompt_key, progress):
        if isinstance(n, str):
            flag(P_DATASET, i, rid, n)
        elif max_prompt_length and n > max_prompt_length:
            flag(P_LENGTH, i, rid, f"{n} tokens > {max_prompt_length}")


def verl_load(path: Path, processor_path: str, image_key: str = "images", prompt_key: str = "prompt",
              progress: bool = False):
    """Load every row of `path` through verl's RLHFDataset; yield (row, id, token count or "Error: why")."""
    from omegaconf import OmegaConf
    from tqdm import tqdm
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from medrl.data.length import count_prompt_tokens, load_processor

    proc = load_processor(str(processor_path))
    with tempfile.TemporaryDirectory(prefix="medrl-check-") as cache:
        config = OmegaConf.create({
            "prompt_key": prompt_key, "image_key": image_key, "cache_dir": cache,
            "max_prompt_length": 10**9, "filter_overlong_prompts": False, "return_raw_chat": True,
        })
        with contextlib.redirect_stdout(sys.stderr):  # verl prints its progress: stdout is the report's
            ds = RLHFDataset(data_files=[str(path)], tokenizer=proc.tokenizer, config=config, processor=proc)
        for i in tqdm(range(len(ds)), desc="load via verl", unit=" row", disable=not progress, mininterval=1.0):
            raw = ds.dataframe[i]
            rid = row_id(raw)
            try:
                item = ds[i]
                msgs = item["raw_prompt"]
                n_img = sum(1 for m in msgs if isinstance(m.get("content"), list)
                            for c in m["content"] if isinstance(c, dict) and c.get("type") == "image")
                if n_img != len(raw.get(image_key) or []):
                    raise ValueError(f"raw_prompt has {n_img} images for {len(raw.get(image_key) or [])}")
                n = count_prompt_tokens(raw, proc, prompt_key=prompt_key, image_key=image_key)
            except Exception as exc:  # whatever verl raises, the row will not train: report it
                yield i, rid, f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            yield i, rid, n


def print_report(report: dict, as_json: bool = False) -> None:
    """Print the check report as a rich table (or JSON)."""
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for note in report["notes"]:
        console.print(f"[yellow]note[/]: {note}")
    lengths, proof = report.get("lengths"), report.get("verified")
    if lengths and lengths.get("counted"):
        console.print(f"prompt tokens: max {lengths['max']} (row {lengths['max_row']}), 50% below "
                      f"{lengths['p50_below']}, 99% below {lengths['p99_below']} ({lengths['counted']} rows counted)")
    if proof is not None:
        style = "red" if proof["mismatches"] else "green"
        console.print(f"[{style}]proven through verl's RLHFDataset[/]: {proof['rows']} rows ({proof['sample']} "
                      f"sampled, {proof['near_limit']} near the limit, {proof['fast_path_skipped']} beyond the "
                      f"fast path), {proof['mismatches']} count(s) differ")
    if not report["problems"]:
        console.print(f"[bold green]OK[/]: {report['file']}: {report['rows']} rows, no problem found")
        return
    t = Table(title=f"medrl check {report['file']} ({report['rows']} rows)", title_style="bold red")
    t.add_column("problem", no_wrap=True)
    t.add_column("rows", justify="right")
    t.add_column("which (row: id)")
    t.add_column("example")
    for name, p in report["problems"].items():
        which = ", ".join(f"{r}: {i}" for r, i in zip(p["rows"], p["ids"]))
        if p["count"] > len(p["rows"]):
            which += ", ..."
        t.add_row(name, str(p["count"]), which, p["example"])
    console.print(t)

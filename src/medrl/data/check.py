"""`medrl check`: preflight a verl RL parquet before it reaches a GPU job.

Each row is checked for the problems that otherwise surface deep inside a run:
`<image>` count vs image count, unreadable images, ground truths that do not
parse, data sources without a reward route, rows with and without images mixed,
and (with the model's processor) loading through verl's own `RLHFDataset` and the
exact prompt length against `data.max_prompt_length`.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from medrl.boxes import BoxError, read_truth_boxes
from medrl.data.records import IMAGE_TOKEN

P_PLACEHOLDER = "<image> count differs from image count"
P_IMAGE = "unreadable image"
P_TRUTH = "ground truth does not parse"
P_ROUTE = "data_source has no reward route"
P_MIXED = "rows with and without images mixed"
P_LENGTH = "prompt over max_prompt_length"
P_DATASET = "verl RLHFDataset could not load the row"
P_COLUMNS = "missing column"


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
    """Why a grounding ground truth is not a JSON list of [x1, y1, x2, y2] boxes in [0, 1], or None.

    The reader is the one the converters and the rewards use, so a row that passes here is a row the reward reads.
    """
    if not isinstance(ground_truth, str):
        return f"ground_truth is {type(ground_truth).__name__}, expected a JSON string"
    try:
        read_truth_boxes(ground_truth)
    except BoxError as exc:
        return str(exc)
    return None


def _route_checker(spec: Any):
    try:
        from medrl.rewards.compose import has_route
    except ImportError as exc:  # the rewards package is optional for a data-only install
        return None, f"reward routes not checked: {exc}"
    return (lambda ds: has_route(ds, spec)), None


def check_file(path: str | Path, processor: str | None = None, max_prompt_length: int | None = None,
               image_key: str = "images", prompt_key: str = "prompt", show: int = 10,
               reward_spec: Any = None, progress: bool = True) -> dict:
    """Check one parquet; returns {"file", "rows", "problems": {name: {count, rows, ids, example}}, "notes"}."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    path = Path(path)
    problems: dict[str, dict] = defaultdict(lambda: {"count": 0, "rows": [], "ids": [], "example": ""})
    notes: list[str] = []

    def flag(name: str, row: int, rid: Any, detail: str) -> None:
        p = problems[name]
        p["count"] += 1
        if len(p["rows"]) < show:
            p["rows"].append(row)
            p["ids"].append(rid)
        if not p["example"]:
            p["example"] = f"row {row}: {detail}"

    pf = pq.ParquetFile(path)
    n_rows = pf.metadata.num_rows
    columns = set(pf.schema_arrow.names)
    for col in ("data_source", prompt_key, "reward_model"):
        if col not in columns:
            flag(P_COLUMNS, -1, None, f"no {col!r} column (columns: {sorted(columns)})")
    route_ok, note = _route_checker(reward_spec)
    if note:
        notes.append(note)
    routes: dict[str, bool] = {}
    with_images, without_images = [], []
    row = 0
    bar = tqdm(total=n_rows, desc="check rows", unit=" row", disable=not progress, mininterval=1.0)
    for batch in pf.iter_batches(batch_size=256):
        for rec in batch.to_pylist():
            extra = rec.get("extra_info") or {}
            rid = extra.get("id", extra.get("index")) if isinstance(extra, dict) else None
            images = rec.get(image_key) or []
            (with_images if images else without_images).append((row, rid))
            prompt = rec.get(prompt_key) or []
            n_tok = sum(str(m.get("content", "")).count(IMAGE_TOKEN) for m in prompt if isinstance(m, dict))
            if n_tok != len(images):
                flag(P_PLACEHOLDER, row, rid, f"{n_tok} <image> for {len(images)} image(s)")
            for k, img in enumerate(images):
                why = _image_problem(img)
                if why:
                    flag(P_IMAGE, row, rid, f"image {k}: {why}")
                    break
            rm = rec.get("reward_model") or {}
            ds = str(rec.get("data_source"))
            if "grounding" in str(rec.get("ability", "")) or "grounding" in ds:
                why = truth_problem(rm.get("ground_truth") if isinstance(rm, dict) else None)
                if why:
                    flag(P_TRUTH, row, rid, why)
            if route_ok is not None:
                if ds not in routes:
                    routes[ds] = route_ok(ds)
                if not routes[ds]:
                    flag(P_ROUTE, row, rid, f"data_source {ds!r}")
            row += 1
            bar.update(1)
    bar.close()
    if with_images and without_images:
        minority = without_images if len(without_images) <= len(with_images) else with_images
        for r, rid in minority:
            flag(P_MIXED, r, rid, f"{len(with_images)} rows with images, {len(without_images)} without")

    if processor:
        _check_with_verl(path, processor, max_prompt_length, image_key, prompt_key, flag, progress)
    else:
        notes.append("no --processor: rows not loaded through verl's RLHFDataset, token length not checked")
    return {"file": str(path), "rows": n_rows, "problems": dict(problems), "notes": notes,
            "routes": routes}


def _check_with_verl(path: Path, processor_path: str, max_prompt_length: int | None, image_key: str,
                     prompt_key: str, flag, progress: bool) -> None:
    """Load every row through verl's RLHFDataset and measure its exact prompt length."""
    from omegaconf import OmegaConf
    from tqdm import tqdm
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from medrl.data.length import count_prompt_tokens, load_processor

    proc = load_processor(str(processor_path))
    with tempfile.TemporaryDirectory(prefix="medrl-check-") as cache:
        config = OmegaConf.create({
            "prompt_key": prompt_key, "image_key": image_key, "cache_dir": cache,
            "max_prompt_length": max_prompt_length or 10**9, "filter_overlong_prompts": False,
            "return_raw_chat": True,
        })
        ds = RLHFDataset(data_files=[str(path)], tokenizer=proc.tokenizer, config=config, processor=proc)
        for i in tqdm(range(len(ds)), desc="load via verl", unit=" row", disable=not progress, mininterval=1.0):
            raw = ds.dataframe[i]
            extra = raw.get("extra_info") or {}
            rid = extra.get("id", extra.get("index")) if isinstance(extra, dict) else None
            try:
                item = ds[i]
                msgs = item["raw_prompt"]
                n_img = sum(1 for m in msgs if isinstance(m.get("content"), list)
                            for c in m["content"] if isinstance(c, dict) and c.get("type") == "image")
                if n_img != len(raw.get(image_key) or []):
                    raise ValueError(f"raw_prompt has {n_img} images for {len(raw.get(image_key) or [])}")
                n = count_prompt_tokens(raw, proc, prompt_key=prompt_key, image_key=image_key)
            except Exception as exc:  # whatever verl raises, the row will not train: report it
                flag(P_DATASET, i, rid, f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            if max_prompt_length and n > max_prompt_length:
                flag(P_LENGTH, i, rid, f"{n} tokens > {max_prompt_length}")


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

"""The rules `medrl check` applies to each row, shared by its full and its fast path.

Problem names (`P_*`), the per-row checks (placeholders, images, ground truths, reward routes,
columns), the collector of problems, and the load of rows through verl's own `RLHFDataset`.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

from medrl.boxes import BoxError, read_truth_boxes
from medrl.data.records import IMAGE_TOKEN
from medrl.rewards.tasks import row_task

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
    if row_task(rec.get("ability"), ds, tasks=("grounding",)):
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


def image_problem(img: Any) -> str | None:
    """Why one `images` entry would not load with PIL (bytes or a local file; URLs are not fetched), or None."""
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


def route_checker(spec: Any):
    """(data_source -> has a reward route, or None; a note when routes cannot be checked)."""
    try:
        from medrl.rewards.compose import has_route
    except ImportError as exc:  # the rewards package is optional for a data-only install
        return None, f"reward routes not checked: {exc}"
    return (lambda ds: has_route(ds, spec)), None


def missing_columns(names: list[str], prompt_key: str) -> list[str]:
    """Why the file lacks a column every row needs (one line each)."""
    return [f"no {col!r} column (columns: {sorted(names)})" for col in ("data_source", prompt_key, "reward_model")
            if col not in names]


@contextlib.contextmanager
def verl_dataset(path: str | Path, processor_path: str, image_key: str = "images", prompt_key: str = "prompt"):
    """verl's RLHFDataset over `path` with the model's processor, reading rows as the trainer does.

    Yields (dataset, processor, config); nothing is filtered for length and the raw chat is kept,
    so every row can be looked at. The dataset's cache folder is removed on exit.
    """
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from medrl.data.length import load_processor

    proc = load_processor(str(processor_path))
    with tempfile.TemporaryDirectory(prefix="medrl-verl-rows-") as cache:
        config = OmegaConf.create({
            "prompt_key": prompt_key, "image_key": image_key, "cache_dir": cache,
            "max_prompt_length": 10**9, "filter_overlong_prompts": False, "return_raw_chat": True,
        })
        with contextlib.redirect_stdout(sys.stderr):  # verl prints its progress: stdout is the caller's
            ds = RLHFDataset(data_files=[str(path)], tokenizer=proc.tokenizer, config=config, processor=proc)
        yield ds, proc, config


def verl_load(path: Path, processor_path: str, image_key: str = "images", prompt_key: str = "prompt",
              progress: bool = False):
    """Load every row of `path` through verl's RLHFDataset; yield (row, id, token count or "Error: why")."""
    from tqdm import tqdm

    from medrl.data.length import count_prompt_tokens

    with verl_dataset(path, processor_path, image_key, prompt_key) as (ds, proc, _):
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

"""MeCoVQA (Complex, Region, Grounding) with SA-Med2D images and masks -> verl rows.

MeCoVQA records are LLaVA records (`id`, `image`, `conversations`) whose image
paths are relative to the SA-Med2D folder (`--image-root`); the kind is read from
each record:
- Grounding: the gpt answer names a mask, ``<mask>masks/...png</mask>`` (often with a
  ``[SEG]`` token). The mask becomes boxes, one per connected region (8-connected,
  `scipy.ndimage.label`), dropping regions smaller than `min_area` pixels; the answer
  is rewritten with those [0, 1] boxes and converted as a grounding row
  (data_source ``medrl/grounding``, IoU reward).
- Region: the human turn names a region mask, ``<region>masks/...png</region>``. The
  region becomes its enclosing [0, 1] box, written into the prompt ("region [x1, y1,
  x2, y2]") and kept in ``extra_info["region"]`` (mask file in ``region_mask``); the
  answer stays the reference (task ``--region-task``, default report/BLEU).
- Complex: plain VQA; the answer stays the reference (task ``--complex-task``).
Paths written without their ``.png`` suffix are found as SA-Med2D subsets do.
The generated sample lives in `medrl.data.mecovqa_sample`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator

from medrl.boxes import box_text, enclosing_box
from medrl.data import rejects
from medrl.data.convert import ConvertOptions, convert
from medrl.data.readers import SourceRecord
from medrl.data.records import DEFAULT_DATA_SOURCE, RecordOptions, RecordResult, build_rows
from medrl.data.rejects import RejectError
from medrl.data.writer import FORMAT_EXTRA_FIELDS

KINDS = ("auto", "complex", "region", "grounding")
MASK_NOT_FOUND = "mask not found"
UNREADABLE_MASK = "unreadable mask"
EMPTY_MASK = "mask has no region above the minimum area"
_MASK_RE = re.compile(r"<mask>\s*(.*?)\s*</mask>", re.S | re.I)
_REGION_RE = re.compile(r"<region>\s*(.*?)\s*</region>", re.S | re.I)
_SEG_RE = re.compile(r"\[SEG\]|<SEG>", re.I)
# SFT reasoning text per kind (the LLaVA defaults speak of chest X-rays; SA-Med2D is every modality).
SFT_THINK = {"complex": "I look at the whole image and what the question asks about.",
             "region": "I look at the region the question names.",
             "grounding": "I look for the structure the question names and outline each part of it."}


@dataclass(frozen=True)
class MecoOptions:
    """How MeCoVQA records become rows."""

    kind: str = "auto"  # force one kind, or read it from each record
    min_area: int = 16  # connected mask regions with fewer pixels are dropped
    mask_root: str | None = None  # default: the image root
    complex_task: str = "report"
    region_task: str = "report"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown MeCoVQA kind {self.kind!r}; expected one of {KINDS}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be >= 1 pixel, got {self.min_area}")


def mask_boxes(mask: Any, min_area: int = 16) -> list[tuple[float, float, float, float]]:
    """[0, 1] boxes of the connected regions (8-connected) of a mask with at least `min_area` pixels."""
    import numpy as np
    from scipy import ndimage

    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    fg = arr > 0
    h, w = fg.shape
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or areas[k] < min_area:
            continue
        ys, xs = sl
        boxes.append((xs.start / w, ys.start / h, xs.stop / w, ys.stop / h))
    boxes.sort(key=lambda b: (b[1], b[0]))  # reading order: top to bottom, then left to right
    return [tuple(round(v, 6) for v in b) for b in boxes]


def _find(ref: str, root: str | None, base_dir: str) -> Path | None:
    p = Path(ref.strip())
    if not p.is_absolute():
        p = Path(root or base_dir) / p
    for cand in (p, p.with_name(p.name + ".png")):
        if cand.is_file():
            return cand.resolve()
    return None


def load_mask_boxes(ref: str, root: str | None, base_dir: str, min_area: int) -> tuple[list, str]:
    """(boxes, resolved path) of a mask file reference; raises RejectError."""
    from PIL import Image

    path = _find(ref, root, base_dir)
    if path is None:
        raise RejectError(MASK_NOT_FOUND, str(Path(root or base_dir) / ref))
    try:
        with Image.open(path) as im:
            im.load()
            arr = im.convert("L") if im.mode not in ("1", "L", "I", "I;16") else im.copy()
    except Exception as exc:  # PIL raises many types for corrupt files; all mean "unreadable"
        raise RejectError(UNREADABLE_MASK, f"{path}: {type(exc).__name__}: {exc}") from exc
    boxes = mask_boxes(arr, min_area)
    if not boxes:
        raise RejectError(EMPTY_MASK, f"{path}: no 8-connected region of {min_area}+ pixels")
    return boxes, str(path)


def _turns(conv: list, roles: tuple[str, ...]) -> Iterator[tuple[dict, str]]:
    """(turn, its text) of the turns spoken by one of `roles`."""
    for t in conv:
        if isinstance(t, dict) and str(t.get("from", "")).lower() in roles:
            yield t, str(t.get("value", ""))


def record_kind(data: dict) -> str:
    """complex, region or grounding, from the tags in the record's turns."""
    conv = data.get("conversations") or []
    text = " ".join(str(t.get("value", "")) for t in conv if isinstance(t, dict))
    if _MASK_RE.search(text):
        return "grounding"
    if _REGION_RE.search(text):
        return "region"
    return "complex"


def build_meco_rows(item: SourceRecord, meco: MecoOptions, rec_opts: RecordOptions) -> RecordResult:
    """Rows of one MeCoVQA record (raises RejectError with a reason)."""
    data = item.data
    if not isinstance(data, dict):
        raise RejectError(rejects.NOT_AN_OBJECT, type(data).__name__)
    kind = meco.kind if meco.kind != "auto" else record_kind(data)
    base_dir = str(Path(item.source).parent)
    image_root = rec_opts.images.image_root
    mask_root = meco.mask_root or image_root
    conv = [dict(t) if isinstance(t, dict) else t for t in data.get("conversations") or []]
    rec = dict(data, conversations=conv)
    img = data.get("image")
    if isinstance(img, str) and _find(img, image_root, base_dir) is not None:
        rec["image"] = str(_find(img, image_root, base_dir))  # SA-Med2D paths may omit ".png"
    extra: dict = {"task_type": f"mecovqa_{kind}"}
    if kind == "grounding":
        task = "grounding"
        masks = []
        for t, value in _turns(conv, ("gpt", "assistant")):
            refs = _MASK_RE.findall(value)
            if not refs:
                continue
            boxes = []
            for ref in refs:
                found, path = load_mask_boxes(ref, mask_root, base_dir, meco.min_area)
                boxes += found
                masks.append(path)
            shown = " and ".join(box_text(b) for b in boxes)  # written as the truth stores them
            text = _MASK_RE.sub("", value).strip()
            text = _SEG_RE.sub(shown, text, count=1) if _SEG_RE.search(text) else f"{text} {shown}".strip()
            t["value"] = _SEG_RE.sub("", text).strip()
        if not masks:
            raise RejectError(rejects.NOT_GROUNDING, "grounding record without <mask>...</mask> in a gpt turn")
        extra["mask"] = masks[0]
    elif kind == "region":
        task = meco.region_task
        for t, value in _turns(conv, ("human", "user")):
            m = _REGION_RE.search(value)
            if not m:
                continue
            boxes, path = load_mask_boxes(m.group(1), mask_root, base_dir, meco.min_area)
            region = enclosing_box(boxes)
            before = value[:m.start()].rstrip()
            said = "" if before.lower().endswith("region") else "region "
            t["value"] = f"{before} {said}{box_text(region)}{value[m.end():]}".strip()
            extra.setdefault("region", list(region))
            extra.setdefault("region_mask", path)
        if "region" not in extra:
            raise RejectError("mecovqa: region record without <region>...</region>")
    else:
        task = meco.complex_task
    opts = replace(rec_opts, task=task, data_source=rec_opts.data_source or DEFAULT_DATA_SOURCE[task],
                   sft_think=rec_opts.sft_think if rec_opts.sft_think is not None else SFT_THINK[kind])
    return build_rows(rec, item.source, item.position, opts).with_extra(**extra)


def prepare_mecovqa(opts: ConvertOptions, meco: MecoOptions = MecoOptions()) -> dict:
    """Convert MeCoVQA JSON file(s) (`opts.inputs`) to verl parquet with `convert`; returns the summary."""
    return convert(replace(opts, builder=partial(build_meco_rows, meco=meco, rec_opts=opts.record),
                           extra_fields=FORMAT_EXTRA_FIELDS, task_label=f"mecovqa {meco.kind}"))

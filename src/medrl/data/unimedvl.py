"""UniMedVL JSONL records -> the LLaVA records the converters already handle.

A UniMedVL record has `main_task_type`, `input_img` / `output_img` (lists of
{path, height, width}) and `message` turns ({from: human|gpt, value}) with one
`<image>` per input image in the human turns. RL here trains text outputs, so a
record that asks for an image (a non-empty `output_img`, or an `<image>` in a gpt
turn) is rejected with reason `UNSUPPORTED_OUTPUT_IMAGE` and counted, never dropped
silently. Everything after the mapping (rows, rejects, split, report) is the LLaVA
path: the reader is registered as input format ``unimedvl``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

from medrl.data import rejects
from medrl.data.readers import SourceRecord, read_records, register_reader
from medrl.data.records import IMAGE_TOKEN
from medrl.data.rejects import Reject, RejectError

UNSUPPORTED_OUTPUT_IMAGE = "unsupported for text-output RL: output image"
NO_TASK_TYPE = "unimedvl: no main_task_type"
BAD_IMAGE_ENTRY = "unimedvl: malformed input_img entry"
NO_MESSAGE = "unimedvl: no message turns"


def _image_list(data: dict, key: str) -> list:
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, dict):  # a single image written without the list
        value = [value]
    if not isinstance(value, list):
        raise RejectError(BAD_IMAGE_ENTRY, f"{key} is {type(value).__name__}, not a list")
    return value


def to_llava(data: Any) -> dict:
    """Map one UniMedVL record to a LLaVA record (raises RejectError with a reason)."""
    if not isinstance(data, dict):
        raise RejectError(rejects.NOT_AN_OBJECT, type(data).__name__)
    task = data.get("main_task_type")
    if not isinstance(task, str) or not task.strip():
        raise RejectError(NO_TASK_TYPE, f"keys: {sorted(data)[:12]}")
    messages = data.get("message", data.get("messages"))
    if not isinstance(messages, list) or not messages:
        raise RejectError(NO_MESSAGE, f"main_task_type={task}")
    outputs = _image_list(data, "output_img")
    gpt_images = sum(str(t.get("value", "")).count(IMAGE_TOKEN) for t in messages
                     if isinstance(t, dict) and str(t.get("from", "")).lower() in ("gpt", "assistant"))
    if outputs or gpt_images:
        raise RejectError(UNSUPPORTED_OUTPUT_IMAGE,
                          f"main_task_type={task}: {len(outputs)} output_img, {gpt_images} <image> in gpt turns")
    paths, size = [], (None, None)
    for k, entry in enumerate(_image_list(data, "input_img")):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"].strip():
            raise RejectError(BAD_IMAGE_ENTRY, f"input_img[{k}] has no path: {str(entry)[:120]}")
        paths.append(entry["path"])
        if k == 0:
            size = (entry.get("width"), entry.get("height"))
    out = {"conversations": messages, "images": paths, "dataset": task}
    if data.get("id") not in (None, ""):
        out["id"] = data["id"]
    w, h = size
    if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
        out["width"], out["height"] = int(w), int(h)  # pixel boxes in answers are relative to this size
    return out


def read_unimedvl(path: str | Path) -> Iterator[SourceRecord | Reject]:
    """Reader (input format ``unimedvl``): UniMedVL JSONL/JSON records as LLaVA records, or rejects."""
    for item in read_records(path, "auto"):
        if isinstance(item, Reject):
            yield item
            continue
        rid = item.data.get("id") if isinstance(item.data, dict) else None
        try:
            data = to_llava(item.data)
        except RejectError as exc:
            yield Reject(exc.reason, exc.detail, item.source, item.position, None if rid is None else str(rid))
            continue
        yield SourceRecord(data, item.source, item.position)


register_reader("unimedvl", read_unimedvl)


def prepare_unimedvl(opts) -> dict:
    """Convert UniMedVL JSONL with the LLaVA pipeline (`opts`: ConvertOptions; input format forced)."""
    from dataclasses import replace

    from medrl.data.convert import convert

    return convert(replace(opts, input_format="unimedvl"))


# ---------------------------------------------------------------- sample generator

REPORT_PROMPT = ("<image>\n\nYou are an experienced radiologist. Write the findings of this chest X-ray.")
VQA_PROMPT = "<image>\n\nIs there a focal opacity in the {side} lung? Answer yes or no."


def write_sample(out_dir: str | Path, n: int = 12, seed: int = 0) -> Path:
    """Write a UniMedVL-shaped JSONL (+ images/): report, VQA, text-only and image-output records."""
    import numpy as np
    from PIL import Image

    from medrl.atomic import atomic_open, atomic_path
    from medrl.data.sample import draw_chest, report_text

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    lines = []
    for i in range(n):
        kind = ("image_understanding", "vqa", "image_understanding", "image_to_image", "text_only",
                "image_understanding")[i % 6]
        drawn = draw_chest(rng, int(prng.random() < 0.6), size=(96, 96))
        rel = f"images/uni_{i:03d}.png"
        if kind != "text_only":
            with atomic_path(out_dir / rel) as tmp:
                Image.fromarray(drawn.pixels, mode="L").save(tmp, format="PNG", optimize=True)
        img = [{"path": rel, "height": 96, "width": 96}]
        rec: dict = {"id": f"uni-{i:03d}", "main_task_type": kind}
        if kind == "image_understanding":
            rec["input_img"] = img
            rec["message"] = [{"from": "human", "value": REPORT_PROMPT},
                              {"from": "gpt", "value": report_text(drawn.findings)}]
        elif kind == "vqa":
            side = drawn.findings[0][2].split()[0] if drawn.findings else prng.choice(["left", "right"])
            rec["input_img"] = img
            rec["message"] = [{"from": "human", "value": VQA_PROMPT.format(side=side)},
                              {"from": "gpt", "value": "Yes." if drawn.findings else "No."}]
        elif kind == "image_to_image":
            rec["input_img"] = img
            rec["output_img"] = [{"path": f"images/uni_{i:03d}_out.png", "height": 96, "width": 96}]
            rec["message"] = [{"from": "human", "value": "<image>\n\nShow this chest X-ray after the opacity resolves."},
                              {"from": "gpt", "value": "Here is the predicted follow-up image. <image>"}]
        else:
            rec["message"] = [{"from": "human", "value": "What are common symptoms of pneumonia?"},
                              {"from": "gpt", "value": "Cough, fever and shortness of breath."}]
        lines.append(json.dumps(rec, ensure_ascii=False))
    path = out_dir / "unimedvl.jsonl"
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path

"""UniMedVL JSONL records -> the LLaVA records the converters already handle.

A UniMedVL record has `main_task_type`, `input_img` / `output_img` (lists of
{path, height, width}) and `message` turns ({from: human|gpt, value}) with one
`<image>` per input image in the human turns. RL here trains text outputs, so a
record that asks for an image (a non-empty `output_img`, or an `<image>` in a gpt
turn) is rejected with reason `UNSUPPORTED_OUTPUT_IMAGE` and counted, never dropped
silently. Everything after the mapping (rows, rejects, split, report) is the LLaVA
path: the reader is registered as input format ``unimedvl``. The generated sample lives
in `medrl.data.unimedvl_sample`.
"""

from __future__ import annotations

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

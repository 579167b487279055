"""Reading evaluation rows: verl's multimodal RL parquet (prompt, images, data_source, reward_model, extra_info)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrl.plain import plain

IMAGE_TOKEN = "<image>"


class RowError(ValueError):
    """A row of the evaluation file is malformed; the message names the file, row and problem."""


@dataclass
class EvalRow:
    """One evaluation prompt with everything needed to generate, score and report on it."""

    key: str  # stable id used by the generation log (--resume)
    index: int  # position in the file
    data_source: str
    messages: list[dict]  # chat messages, content as lists of {"type": "image"|"text"} parts
    images: list[Any]  # verl image payloads ({"bytes"} / {"image": "file://..."} / PIL)
    ground_truth: Any
    extra_info: dict = field(default_factory=dict)
    ability: str = ""

    @property
    def category(self) -> str:
        """The row's category: extra_info `category`, else its `dataset` tag, else "-"."""
        return str(self.extra_info.get("category") or self.extra_info.get("dataset") or "-")


def split_content(content: Any) -> list[dict]:
    """A message content string with `<image>` placeholders -> processor content parts."""
    if isinstance(content, list):  # already parts
        return [dict(p) for p in content]
    parts: list[dict] = []
    pieces = str(content).split(IMAGE_TOKEN)
    for i, piece in enumerate(pieces):
        if i > 0:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def row_from_record(rec: dict, index: int, where: str) -> EvalRow:
    """Validate one parquet record into an EvalRow; raises RowError naming `where` and the row."""
    at = f"{where} row {index}"
    prompt = plain(rec.get("prompt"))
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt)
        except ValueError:
            prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) and "role" in m for m in prompt):
        raise RowError(f"{at}: 'prompt' must be a non-empty list of {{role, content}} messages")
    images = rec.get("images")
    images = [] if images is None else list(images)
    messages = [{"role": m["role"], "content": split_content(m.get("content", ""))} for m in prompt]
    n_slots = sum(1 for m in messages for p in m["content"] if p.get("type") == "image")
    if n_slots != len(images):
        raise RowError(f"{at}: {n_slots} <image> placeholder(s) in the prompt but {len(images)} image(s)")
    reward_model = plain(rec.get("reward_model")) or {}
    if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
        raise RowError(f"{at}: 'reward_model.ground_truth' is missing")
    extra = plain(rec.get("extra_info")) or {}
    if not isinstance(extra, dict):
        raise RowError(f"{at}: 'extra_info' must be a mapping")
    data_source = rec.get("data_source")
    if not data_source:
        raise RowError(f"{at}: 'data_source' is missing")
    key = str(extra.get("id", extra.get("index", index)))
    return EvalRow(key=f"{index}:{key}", index=index, data_source=str(data_source), messages=messages,
                   images=[plain(im) if isinstance(im, dict) else im for im in images],
                   ground_truth=reward_model["ground_truth"], extra_info=extra, ability=str(rec.get("ability") or ""))


def read_rows(path: str | Path, limit: int | None = None) -> list[EvalRow]:
    """All (or the first `limit`) rows of a verl RL parquet file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise RowError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise RowError(f"{path}: not a readable parquet file ({exc})") from exc
    missing = {"prompt", "data_source", "reward_model"} - set(table.column_names)
    if missing:
        raise RowError(f"{path}: missing column(s) {sorted(missing)}; expected verl's RL row format")
    if limit is not None:
        table = table.slice(0, limit)
    return [row_from_record(rec, i, str(path)) for i, rec in enumerate(table.to_pylist())]


def load_image(payload: Any):
    """A PIL image from a verl image payload, resized the way verl's rollout resizes it."""
    from PIL import Image
    from verl.utils.dataset.vision_utils import process_image

    if isinstance(payload, Image.Image):
        return payload.convert("RGB")
    if isinstance(payload, dict):
        # process_image writes into the dict; parquet structs fill absent fields with None.
        payload = {k: v for k, v in payload.items() if v is not None}
        if "bytes" in payload:
            payload.pop("image", None)
            payload.pop("path", None)
        elif "image" not in payload and payload.get("path"):
            payload["image"] = payload.pop("path")
        return process_image(payload)
    if isinstance(payload, (bytes, bytearray)):
        return Image.open(io.BytesIO(payload)).convert("RGB")
    return process_image({"image": str(payload)})


def original_image(payload: Any):
    """The image as stored (no resizing), for drawing box overlays; None when unreadable."""
    from PIL import Image

    try:
        if isinstance(payload, Image.Image):
            return payload.convert("RGB")
        if isinstance(payload, dict) and payload.get("bytes") is not None:
            return Image.open(io.BytesIO(payload["bytes"])).convert("RGB")
        ref = payload.get("image") or payload.get("path") if isinstance(payload, dict) else payload
        ref = str(ref)
        if ref.startswith("file://"):
            ref = ref[len("file://"):]
        return Image.open(ref).convert("RGB")
    except (OSError, ValueError, AttributeError):
        return None

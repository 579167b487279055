"""Images: resolve a record's image reference, read its size, embed or reference it for verl.

verl accepts `{"bytes": ...}` (embedded) or `{"image": "file:///abs", "min_pixels", "max_pixels"}`
(a reference that qwen_vl_utils resizes on load). Missing or unreadable images raise
`RejectError` with a reason, so the record is rejected rather than reaching a GPU job.
"""

from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrl.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS
from medrl.data import rejects
from medrl.data.rejects import RejectError

IMAGE_MODES = ("embed", "ref")


@dataclass(frozen=True)
class ImageOptions:
    """How images are found and stored."""

    image_root: str | None = None  # relative paths resolve here; else next to the input file
    mode: str = "embed"  # "embed": {"bytes"}; "ref": {"image": file URI, min/max pixels}
    max_pixels: int | None = None  # embed: downscale above this; ref: written as max_pixels
    min_pixels: int = QWEN_MIN_PIXELS
    verify: bool = True  # decode every image (catches corrupt files); ref mode may skip it


@dataclass
class ImageInfo:
    """One resolved image: its verl payload, where it came from and its original size."""

    payload: dict
    origin: str  # path or "<embedded>"
    width: int | None
    height: int | None


def resolve_path(ref: str, image_root: str | None, base_dir: str | None) -> Path:
    """Absolute path of an image reference (`file://` prefixes and relative paths handled)."""
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    p = Path(os.path.expanduser(ref))
    if not p.is_absolute():
        p = Path(image_root or base_dir or ".") / p
    return p.resolve()


def _decode_data_uri(ref: str) -> bytes:
    head, _, body = ref.partition(",")
    if ";base64" not in head:
        raise RejectError(rejects.UNREADABLE_IMAGE, "data URI is not base64")
    try:
        return base64.b64decode(body, validate=False)
    except ValueError as exc:
        raise RejectError(rejects.UNREADABLE_IMAGE, f"bad base64 data URI: {exc}") from exc


def _open_checked(data: bytes, origin: str, verify: bool):
    """Open image bytes with PIL; decode fully when `verify` (truncated/corrupt files fail here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        if verify:
            im.load()
        return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RejectError(rejects.UNREADABLE_IMAGE, f"{origin}: {type(exc).__name__}: {exc}") from exc


def downscale(im, max_pixels: int):
    """Resize `im` (keeping its aspect ratio) so width*height <= max_pixels; None if already small."""
    from PIL import Image

    w, h = im.size
    if w * h <= max_pixels:
        return None
    scale = math.sqrt(max_pixels / (w * h))
    nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
    while nw * nh > max_pixels:  # int rounding can still overshoot by a row
        nh -= 1
    return im.resize((nw, nh), Image.Resampling.BICUBIC)


def _encode_png(im) -> bytes:
    buf = io.BytesIO()
    if im.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        im = im.convert("RGB")
    im.save(buf, format="PNG")
    return buf.getvalue()


def load_image(spec: Any, opts: ImageOptions, base_dir: str | None = None) -> ImageInfo:
    """Turn one image reference (path, file URI, data URI, bytes, or {"bytes"/"path"}) into an ImageInfo."""
    data: bytes | None = None
    path: Path | None = None
    if isinstance(spec, dict):
        if spec.get("bytes"):
            data = bytes(spec["bytes"])
        elif spec.get("path") or spec.get("image"):
            spec = spec.get("path") or spec.get("image")
        else:
            raise RejectError(rejects.NO_IMAGE, f"image entry without bytes or path: keys {sorted(spec)}")
    if isinstance(spec, (bytes, bytearray, memoryview)):
        data = bytes(spec)
    if data is None:
        if not isinstance(spec, str) or not spec.strip():
            raise RejectError(rejects.NO_IMAGE, f"image reference is {type(spec).__name__}, not a path")
        if spec.startswith("data:"):
            data = _decode_data_uri(spec)
        else:
            path = resolve_path(spec.strip(), opts.image_root, base_dir)
            if not path.is_file():
                raise RejectError(rejects.IMAGE_NOT_FOUND, str(path))
    origin = str(path) if path is not None else "<embedded>"

    if opts.mode == "ref":
        if path is None:
            raise RejectError(rejects.NO_IMAGE, "embedded image cannot be written as a file reference")
        width = height = None
        if opts.verify:
            im = _open_checked(path.read_bytes(), origin, verify=True)
            width, height = im.size
        payload = {
            "image": path.as_uri(),
            "min_pixels": int(opts.min_pixels),
            "max_pixels": int(opts.max_pixels or QWEN_MAX_PIXELS),
        }
        return ImageInfo(payload, origin, width, height)

    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RejectError(rejects.IMAGE_NOT_FOUND, f"{origin}: {exc}") from exc
    im = _open_checked(data, origin, verify=opts.verify or bool(opts.max_pixels))
    width, height = im.size
    if opts.max_pixels:
        small = downscale(im, opts.max_pixels)
        if small is not None:
            data = _encode_png(small)
    return ImageInfo({"bytes": data}, origin, width, height)

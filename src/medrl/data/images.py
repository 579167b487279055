"""Images: resolve a record's image reference, read its size, embed or reference it for verl.

verl accepts `{"bytes": ...}` (embedded) or `{"image": "file:///abs", "min_pixels", "max_pixels"}`
(a reference that qwen_vl_utils resizes on load). Missing or unreadable images raise
`RejectError` with a reason, so the record is rejected rather than reaching a GPU job.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrl.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS
from medrl.data import rejects
from medrl.data.image_header import LRU, HeaderError, probe_file
from medrl.data.rejects import RejectError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


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


def resolve_path(ref: str, image_root: str | None, base_dir: str | None) -> str:
    """Absolute path of an image reference (`file://` prefixes and relative paths handled)."""
    # Plain string operations: pathlib's resolve() costs several system calls per record.
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    if ref.startswith("~"):
        ref = os.path.expanduser(ref)
    if not os.path.isabs(ref):
        ref = os.path.join(image_root or base_dir or ".", ref)
    return os.path.abspath(ref)


@functools.lru_cache(maxsize=65536)
def _resolve_under_absolute(ref: str, image_root: str | None, base_dir: str | None) -> str:
    return resolve_path(ref, image_root, base_dir)


def _resolve(ref: str, image_root: str | None, base_dir: str | None) -> str:
    """`resolve_path`, remembered when the folder it resolves against is absolute (the result is then fixed)."""
    root = image_root or base_dir
    if root and os.path.isabs(root) and not ref.startswith("~"):
        return _resolve_under_absolute(ref, image_root, base_dir)
    return resolve_path(ref, image_root, base_dir)


@functools.lru_cache(maxsize=65536)
def _file_uri(path: str) -> str:
    return Path(path).as_uri()


def _decode_data_uri(ref: str) -> bytes:
    head, _, body = ref.partition(",")
    if ";base64" not in head:
        raise RejectError(rejects.UNREADABLE_IMAGE, "data URI is not base64")
    try:
        return base64.b64decode(body, validate=False)
    except ValueError as exc:
        raise RejectError(rejects.UNREADABLE_IMAGE, f"bad base64 data URI: {exc}") from exc


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_FAST_MAX_BYTES = 1 << 28


def png_size_checked(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG after checking every chunk's CRC and inflating its pixel data.

    Raises ValueError for a damaged file; returns None for PNGs this fast path
    does not cover (interlaced), which then go through PIL. It is what a full decode
    would notice (truncation, bit flips, short data) at a fraction of PIL's cost.
    """
    if data[:8] != _PNG_MAGIC:
        return None
    pos, n = 8, len(data)
    idat: list[bytes] = []
    width = height = 0
    row_bytes = 0
    seen_end = False
    while pos + 12 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > n:
            raise ValueError(f"chunk {ctype!r} truncated at byte {n}")
        if zlib.crc32(data[pos + 4:pos + 8 + length]) != int.from_bytes(data[end - 4:end], "big"):
            raise ValueError(f"bad CRC in chunk {ctype!r} at byte {pos}")
        if ctype == b"IHDR":
            width, height = int.from_bytes(data[pos + 8:pos + 12], "big"), int.from_bytes(data[pos + 12:pos + 16], "big")
            depth, color, interlace = data[pos + 16], data[pos + 17], data[pos + 20]
            if interlace or color not in _PNG_CHANNELS:
                return None
            row_bytes = 1 + (width * _PNG_CHANNELS[color] * depth + 7) // 8
        elif ctype == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        elif ctype == b"IEND":
            seen_end = True
            break
        pos = end
    if not seen_end:
        raise ValueError("no IEND chunk: the file is truncated")
    if not (width and height and idat):
        raise ValueError("no IHDR or no image data")
    expected = row_bytes * height
    if expected > _PNG_FAST_MAX_BYTES:
        return None  # huge: PIL's decompression-bomb guard decides
    inflater = zlib.decompressobj()
    try:
        # max_length bounds memory even when the header lies about the size.
        raw = inflater.decompress(b"".join(idat), expected + 1)
    except zlib.error as exc:
        raise ValueError(f"pixel data does not inflate: {exc}") from exc
    if len(raw) != expected or not inflater.eof:
        raise ValueError(f"pixel data is {len(raw)} bytes{'' if inflater.eof else ' (stream cut)'}, "
                         f"expected {expected}")
    return width, height


def _open_checked(data: bytes, origin: str, verify: bool):
    """Open image bytes with PIL; decode fully when `verify` (truncated/corrupt files fail here)."""
    from PIL import Image, UnidentifiedImageError

    # Naming the format from the magic bytes spares PIL trying every plugin.
    formats = ("PNG",) if data[:8] == _PNG_MAGIC else ("JPEG",) if data[:3] == _JPEG_MAGIC else None
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
        if verify:
            im.load()
        return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RejectError(rejects.UNREADABLE_IMAGE, f"{origin}: {type(exc).__name__}: {_no_address(exc)}") from exc


_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")


def _no_address(exc: BaseException) -> str:
    """PIL's message without the repr of our in-memory buffer: its address differs per run and record."""
    return _OBJECT_REPR.sub("the image bytes", str(exc))


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
    if opts.mode == "ref" and type(spec) is str:
        # A file named by several records is resolved and probed once a run: its size, URI and
        # verdict are remembered under the reference itself (one lookup for each later record).
        key = (spec, base_dir, opts)
        info = _REF_INFOS.get(key)
        if info is None:
            info = _load_image(spec, opts, base_dir)
            _REF_INFOS.put(key, info)
        return info
    return _load_image(spec, opts, base_dir)


def _load_image(spec: Any, opts: ImageOptions, base_dir: str | None) -> ImageInfo:
    data: bytes | None = None
    path: str | None = None
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
            path = _resolve(spec.strip(), opts.image_root, base_dir)
    origin = path if path is not None else "<embedded>"

    if opts.mode == "ref":
        if path is None:
            raise RejectError(rejects.NO_IMAGE, "embedded image cannot be written as a file reference")
        width = height = None
        if opts.verify:
            width, height = _header_size(path)
        elif not os.path.isfile(path):
            raise RejectError(rejects.IMAGE_NOT_FOUND, path)
        payload = {
            "image": _file_uri(path),
            "min_pixels": int(opts.min_pixels),
            "max_pixels": int(opts.max_pixels or QWEN_MAX_PIXELS),
        }
        return ImageInfo(payload, origin, width, height)

    if data is None:
        data, identity = _read_with_identity(path)
        if not opts.max_pixels:
            # A file used by several records is checked once: later reads of the same unchanged
            # file (same inode, size and modification time) reuse the verdict.
            size = _VERIFIED.get(path)
            if size is None or size[0] != identity:
                size = (identity, _checked_size(data, origin, opts.verify))
                if opts.verify:
                    _VERIFIED.put(path, size)
            width, height = size[1]
            return ImageInfo({"bytes": data}, origin, width, height)
    if not opts.max_pixels:
        width, height = _checked_size(data, origin, opts.verify)
        return ImageInfo({"bytes": data}, origin, width, height)
    im = _open_checked(data, origin, verify=True)
    width, height = im.size
    small = downscale(im, opts.max_pixels)
    if small is not None:
        data = _encode_png(small)
    return ImageInfo({"bytes": data}, origin, width, height)


def _checked_size(data: bytes, origin: str, verify: bool = True) -> tuple[int, int]:
    """Image size, after checking the file: the fast PNG check, else a PIL decode."""
    try:
        size = png_size_checked(data)
    except ValueError as exc:
        raise RejectError(rejects.UNREADABLE_IMAGE, f"{origin}: {exc}") from exc
    if size is not None:
        return size
    return _open_checked(data, origin, verify=verify).size


_VERIFIED = LRU(65536)  # path -> (file identity, (width, height)) of files whose every byte was checked
_HEADERS = LRU(65536)  # path -> (file identity, (width, height)) from header and end (ref mode)
# (reference, base folder, options) -> ImageInfo of ref mode. Unlike _HEADERS it does not stat the
# file again on a hit (a third of a cached record's image cost): a file replaced during a run
# keeps its first verdict, as it would had it been replaced just after the run.
_REF_INFOS = LRU(65536)


def forget_references() -> None:
    """Drop ref mode's remembered verdicts (each conversion run starts with none)."""
    _REF_INFOS.clear()


def _header_size(path: str) -> tuple[int, int]:
    """Size of a referenced file from its header; the file's end proves it whole (else a full check)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RejectError(rejects.IMAGE_NOT_FOUND, path) from None
    except OSError as exc:
        raise RejectError(rejects.IMAGE_NOT_FOUND, f"{path}: {exc}") from exc
    identity = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _HEADERS.get(path)
    if hit is not None and hit[0] == identity:
        return hit[1]
    try:
        probe = probe_file(path)
    except HeaderError as exc:
        raise RejectError(rejects.UNREADABLE_IMAGE, f"{path}: {exc}") from exc
    except OSError as exc:
        raise RejectError(rejects.IMAGE_NOT_FOUND, f"{path}: {exc}") from exc
    if probe.header is not None and probe.complete:
        size = (probe.header.width, probe.header.height)
    else:  # another format, or an end that proves nothing: decode it
        size = _checked_size(_read(path), path)
    _HEADERS.put(path, (identity, size))
    return size


def _read_with_identity(path: str) -> tuple[bytes, tuple[int, int, int]]:
    """The file's bytes and (inode, size, mtime) of what was read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise RejectError(rejects.IMAGE_NOT_FOUND, path) from None
    except OSError as exc:  # a folder, no permission, I/O error
        raise RejectError(rejects.IMAGE_NOT_FOUND, f"{path}: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectError(rejects.IMAGE_NOT_FOUND, f"{path}: not a regular file")
        # One byte more than fstat's size: a short first read is the whole file (one read call, not two).
        first = os.read(fd, st.st_size + 1)
        if len(first) == st.st_size:
            return first, (st.st_ino, st.st_size, st.st_mtime_ns)
        chunks = [first]
        while chunks[-1]:  # the file changed size since fstat: read to its end
            chunks.append(os.read(fd, 1 << 16))
        return b"".join(chunks), (st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise RejectError(rejects.IMAGE_NOT_FOUND, f"{path}: {exc}") from exc
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise RejectError(rejects.IMAGE_NOT_FOUND, path) from None
    except OSError as exc:  # a folder, no permission, I/O error
        raise RejectError(rejects.IMAGE_NOT_FOUND, f"{path}: {exc}") from exc

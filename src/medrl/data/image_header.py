"""Image headers: an image's format and size from its first bytes, and a cheap end-of-file check.

Pure functions over bytes, plus one small reader that opens a file, reads its head
and its tail and nothing in between. A 2048-px X-ray costs two small reads instead
of a full decode, which is what lets a preflight keep up with a million rows.

What the header says is what PIL's `Image.open(...).size` says (the tests compare
both on every format here). The end check is deliberately one-sided: a PNG that ends
with IEND or a JPEG that ends with EOI passed it; anything else is only "not proven"
(`complete` is None), and callers then decode the file to decide.
"""

from __future__ import annotations

import io
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xFF}  # RSTn, TEM and fill bytes have no length
HEAD_BYTES = 8 * 1024  # enough for most headers; JPEGs with big EXIF/ICC blocks are read further
TAIL_BYTES = 4 * 1024
MAX_HEAD_BYTES = 4 * 1024 * 1024  # a JPEG whose frame header is further in than this goes to PIL


class HeaderError(ValueError):
    """The bytes are not a readable image header (truncated, wrong magic, zero size)."""


class NeedMore(Exception):
    """The header continues past the bytes given; `need` is how many bytes would do."""

    def __init__(self, need: int):
        super().__init__(need)
        self.need = need


@dataclass(frozen=True)
class Header:
    """What the first bytes of an image file say."""

    format: str  # "PNG", "JPEG", "GIF", "BMP", "WEBP"
    width: int
    height: int


def _png(data: bytes) -> Header:
    if len(data) < 24:
        raise NeedMore(24)
    if data[12:16] != b"IHDR":
        raise HeaderError("PNG without IHDR as its first chunk")
    width, height = struct.unpack(">II", data[16:24])
    return Header("PNG", width, height)


def _jpeg(data: bytes) -> Header:
    pos, n = 2, len(data)  # just after SOI
    while True:
        if pos >= n:  # a segment ran past the bytes read: ask for it and a little more
            raise NeedMore(max(2 * n, pos + 1024))
        if data[pos] != 0xFF:
            raise HeaderError(f"JPEG marker expected at byte {pos}")
        # Markers may be preceded by any number of 0xFF fill bytes.
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise NeedMore(2 * n)
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            raise HeaderError("JPEG without a frame header (SOF) before its image data")
        if pos + 2 > n:
            raise NeedMore(max(2 * n, pos + 2))
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise HeaderError(f"JPEG segment of length {length} at byte {pos}")
        if marker in _SOF:
            if pos + 7 > n:
                raise NeedMore(pos + 7)
            height, width = struct.unpack(">HH", data[pos + 3:pos + 7])
            return Header("JPEG", width, height)
        pos += length


def _gif(data: bytes) -> Header:
    if len(data) < 10:
        raise NeedMore(10)
    width, height = struct.unpack("<HH", data[6:10])
    return Header("GIF", width, height)


def _bmp(data: bytes) -> Header:
    if len(data) < 26:
        raise NeedMore(26)
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return Header("BMP", abs(width), abs(height))  # negative height: top-down rows, same size


def _webp(data: bytes) -> Header:
    if len(data) < 30:
        raise NeedMore(30)
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderError("WEBP VP8 frame without its start code")
        w, h = struct.unpack("<HH", data[26:30])
        return Header("WEBP", w & 0x3FFF, h & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise HeaderError("WEBP VP8L without its signature byte")
        bits = int.from_bytes(data[21:25], "little")
        return Header("WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return Header("WEBP", w, h)
    raise HeaderError(f"WEBP with unknown first chunk {chunk!r}")


def parse_header(data: bytes) -> Header | None:
    """Format and size from an image's first bytes; None for a format this module does not know.

    Raises HeaderError for damaged headers and NeedMore when `data` stops inside the header.
    """
    if data[:8] == PNG_MAGIC:
        head = _png(data)
    elif data[:3] == JPEG_MAGIC:
        head = _jpeg(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        head = _gif(data)
    elif data[:2] == b"BM":
        head = _bmp(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        head = _webp(data)
    else:
        if len(data) < 12:
            raise NeedMore(12)
        return None
    if head.width <= 0 or head.height <= 0:
        raise HeaderError(f"{head.format} header gives size {head.width}x{head.height}")
    return head


def tail_complete(fmt: str, tail: bytes) -> bool | None:
    """True when the file's last bytes show it ends where a whole image ends; None when not proven."""
    if fmt == "PNG":
        # Trailing bytes after IEND are legal for PIL: look in the whole tail, not only its end.
        return True if _PNG_IEND in tail else None
    if fmt == "JPEG":
        return True if _JPEG_EOI in tail[-TAIL_BYTES:] else None
    return None


@dataclass(frozen=True)
class Probe:
    """Header plus end check of one image (bytes or file)."""

    header: Header | None  # None: a format parse_header does not know (callers ask PIL)
    complete: bool | None  # True: ends like a whole image; None: not proven


def probe_bytes(data: bytes) -> Probe:
    """Probe an image held in memory."""
    try:
        head = parse_header(data)
    except NeedMore:
        raise HeaderError(f"image data ends inside its header ({len(data)} bytes)") from None
    return Probe(head, tail_complete(head.format, data[-TAIL_BYTES:]) if head else None)


def probe_file(path: str) -> Probe:
    """Probe an image file with two small reads (head and tail); raises OSError / HeaderError."""
    # os-level calls: a preflight probes tens of thousands of files, and a buffered file object
    # costs more than the two small reads themselves.
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size <= HEAD_BYTES + TAIL_BYTES:  # small file: read it whole
            return probe_bytes(os.pread(fd, size, 0))
        data = os.pread(fd, HEAD_BYTES, 0)
        while True:
            try:
                head = parse_header(data)
                break
            except NeedMore as more:
                if len(data) >= MAX_HEAD_BYTES:
                    return Probe(None, None)  # header unusually far in: let PIL read it
                data = os.pread(fd, min(more.need, size, MAX_HEAD_BYTES), 0)
                if len(data) >= size:
                    return probe_bytes(data)
        if head is None:
            return Probe(None, None)
        return Probe(head, tail_complete(head.format, os.pread(fd, TAIL_BYTES, size - TAIL_BYTES)))
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Checked:
    """An image's size and, when it would not load, why."""

    size: tuple[int, int] | None
    problem: str | None = None


def check_image(source: str | bytes) -> Checked:
    """Size and soundness from the header and the file's end; a full decode only where they prove nothing."""
    where = source if isinstance(source, str) else f"{len(source)} image bytes"
    try:
        probe = probe_bytes(source) if isinstance(source, bytes) else probe_file(source)
    except FileNotFoundError:
        return Checked(None, f"file not found: {source}")
    except (OSError, HeaderError) as exc:
        return Checked(None, f"{where}: {type(exc).__name__}: {exc}")
    if probe.header is not None and probe.complete:
        return Checked((probe.header.width, probe.header.height))
    from PIL import Image

    try:  # other formats, or a PNG/JPEG whose end is not where a whole image ends
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            return Checked(im.size)
    except Exception as exc:  # PIL raises many types for corrupt data; all mean "unreadable"
        return Checked(None, f"{where}: {type(exc).__name__}: {exc}")


class ImageChecks:
    """`check_image` with a bounded cache per file path: each file is probed once however many rows use it."""

    def __init__(self, cache_size: int = 65536):
        self.cache = LRU(cache_size)

    def check(self, source: str | bytes) -> Checked:
        """The (cached, for paths) result of check_image."""
        if isinstance(source, bytes):
            return check_image(source)
        hit = self.cache.get(source)
        if hit is None:
            hit = check_image(source)
            self.cache.put(source, hit)
        return hit


class LRU(OrderedDict):
    """A small least-recently-used cache: memory stays flat however many rows pass through."""

    def __init__(self, maxsize: int = 65536):
        super().__init__()
        self.maxsize = maxsize

    def get(self, key, default=None):
        """The value for key (marked as recently used), else default."""
        try:
            self.move_to_end(key)
        except KeyError:
            return default
        return self[key]

    def put(self, key, value) -> None:
        """Store a value, evicting the least recently used entry when full."""
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.maxsize:
            self.popitem(last=False)

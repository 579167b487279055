"""Image headers read from the first bytes agree with PIL, and the end check catches truncation."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from medrl.data import image_header as ih


def _encode(fmt: str, size: tuple[int, int], mode: str = "L", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, format=fmt, **kw)
    return buf.getvalue()


# EXIF and ICC blocks that push the frame header past the first 64 KiB read.
BIG_META = {"exif": b"Exif\x00\x00" + b"\x00" * 60000, "icc_profile": b"\x00" * 20000}
CASES = [
    ("PNG", (1, 1), "L", {}),
    ("PNG", (2047, 1025), "L", {}),
    ("PNG", (300, 17), "RGBA", {}),
    ("PNG", (64, 48), "I;16", {}),
    ("JPEG", (1024, 2048), "L", {}),
    ("JPEG", (333, 777), "RGB", {"progressive": True}),
    ("JPEG", (65, 9), "RGB", BIG_META),  # metadata blocks longer than the first read
    ("GIF", (123, 45), "P", {}),
    ("BMP", (99, 101), "RGB", {}),
    ("WEBP", (250, 130), "RGB", {"lossless": True}),
    ("WEBP", (250, 130), "RGB", {"quality": 50}),
    ("TIFF", (40, 30), "L", {}),  # not parsed here: the caller falls back to PIL
]


@pytest.mark.parametrize("fmt,size,mode,kw", CASES, ids=[f"{c[0]}-{c[1][0]}x{c[1][1]}" for c in CASES])
def test_header_size_equals_pils_for_bytes_and_files(fmt, size, mode, kw, tmp_path):
    data = _encode(fmt, size, mode, **kw)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == size
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    for probe in (ih.probe_bytes(data), ih.probe_file(str(path))):
        if fmt == "TIFF":
            assert probe.header is None  # PIL reads it (above); the header parser leaves it to PIL
            continue
        assert (probe.header.width, probe.header.height) == size
        assert probe.header.format == fmt
        if fmt in ("PNG", "JPEG"):
            assert probe.complete is True


def test_random_jpeg_and_png_sizes_match_pil(tmp_path):
    rng = random.Random(3)
    for k in range(60):
        size = (rng.randint(1, 2600), rng.randint(1, 2600))
        fmt = "PNG" if k % 2 else "JPEG"
        data = _encode(fmt, size)
        path = tmp_path / f"{k}.{fmt}"
        path.write_bytes(data)
        h = ih.probe_file(str(path)).header
        assert (h.width, h.height) == size


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_not_proven_complete(fmt, tmp_path):
    data = _encode(fmt, (800, 600), "RGB") if fmt == "JPEG" else _encode("PNG", (800, 600))
    for cut in (len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}"
        p.write_bytes(data[:cut])
        assert ih.probe_file(str(p)).complete is None
        assert ih.probe_bytes(data[:cut]).complete is None


def test_trailing_bytes_after_png_end_still_count_as_complete():
    data = _encode("PNG", (10, 10)) + b"\x00" * 100
    assert ih.probe_bytes(data).complete is True


@pytest.mark.parametrize("data,why", [
    (ih.PNG_MAGIC + b"\x00\x00\x00\x0dIHDR" + b"\x00" * 8 + b"\x08\x00\x00\x00\x00" + b"\x00" * 4, "size 0x0"),
    (ih.PNG_MAGIC + b"\x00\x00\x00\x0dIDAT" + b"\x00" * 20, "without IHDR"),
    (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 30, "without a frame header"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 9 + b"\x12\x34", "marker expected"),
    (ih.PNG_MAGIC + b"\x00\x00", "ends inside its header"),
])
def test_damaged_headers_raise_with_a_reason(data, why):
    with pytest.raises(ih.HeaderError, match=why):
        ih.probe_bytes(data)


def test_file_that_ends_inside_its_header(tmp_path):
    data = _encode("JPEG", (64, 64), "RGB", **BIG_META)
    p = tmp_path / "short.jpg"
    p.write_bytes(data[:70000])  # stops inside the metadata, before the frame header
    with pytest.raises(ih.HeaderError, match="ends inside its header"):
        ih.probe_file(str(p))


def test_unknown_format_is_none_not_an_error():
    assert ih.parse_header(b"just some text, not an image") is None


def test_lru_keeps_the_most_recent_entries():
    cache = ih.LRU(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert set(cache) == {"a", "c"} and cache.get("b") is None

"""Dataset-scale benchmark inputs, built once under a work folder and reused by later runs.

- `convert_inputs`: a RadVLM-style LLaVA JSON array of N grounding records over M distinct
  small PNG files (record i uses image i % M). Distinct files, so parquet cannot fold
  repeated image bytes into one value.
- `check_inputs`: a verl RL parquet of N rows (medrl's schema, `--image_mode ref` rows)
  over M distinct 1024-2048 px images (PNG and JPEG), 5 % of rows with two images and
  10 % with an earlier turn as context; prompts are RadVLM's templated questions.

Making 20,000 large images by drawing each would take longer than the benchmark, so
images share a few hundred pixel payloads and differ by a text/comment block holding
their index: every file is a valid, distinct image of its own size.

    python benchmarks/scale_inputs.py [--work /tmp/medrl-bench-scale]   # build (or find) both, print sizes
"""

from __future__ import annotations

import argparse
import io
import json
import random
import struct
import time
import zlib
from pathlib import Path

DEFAULT_WORK = "/tmp/medrl-bench-scale"
ABNORMALITIES = ("nodule", "mass", "consolidation", "lung opacity", "pleural effusion", "cardiomegaly",
                 "atelectasis", "pneumothorax", "aortic enlargement", "pulmonary fibrosis")
QUESTIONS = ("<image>\nPlease locate the {a} in this image.", "<image>\nWhere is the {a}? Give its bounding box.",
             "<image>\nFind the {a} on this chest radiograph.",
             "<image>\nCan you identify the location of the {a} on this chest X-ray?")
INSTRUCTION = ("First think step by step inside <think> </think>, then give your final answer inside <answer> "
               "</answer>: the bounding box of each finding as [x1, y1, x2, y2] with coordinates in [0, 1], or "
               "'No finding' if there is none.")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_parts(width: int, height: int, pixels: bytes | None = None) -> tuple[bytes, bytes]:
    """(signature + IHDR, IDAT + IEND) of an 8-bit grayscale PNG (flat grey unless `pixels` given)."""
    raw = pixels if pixels is not None else (b"\x00" + bytes([96]) * width) * height
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return head, _chunk(b"IDAT", zlib.compress(raw, 1)) + _chunk(b"IEND", b"")


def _distinct_png(parts: tuple[bytes, bytes], index: int) -> bytes:
    return parts[0] + _chunk(b"tEXt", b"medrl-bench\x00" + str(index).encode()) + parts[1]


def _distinct_jpeg(base: bytes, index: int) -> bytes:
    comment = f"medrl-bench {index}".encode()
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + base[2:]


def _write_small_pngs(img_dir: Path, n_images: int, size: int) -> None:
    """Chest look-alikes (64 drawings) made distinct per file."""
    import numpy as np

    from medrl.data.sample import draw_chest

    rng = np.random.default_rng(0)
    bases = []
    for _ in range(64):
        px = draw_chest(rng, 1, (size, size)).pixels
        raw = b"".join(b"\x00" + px[r].tobytes() for r in range(size))
        bases.append(_png_parts(size, size, raw))
    for k in range(n_images):
        (img_dir / f"{k}.png").write_bytes(_distinct_png(bases[k % 64], k))


def convert_inputs(work: Path, n_records: int, n_images: int = 20_000, size: int = 64) -> Path:
    """LLaVA JSON of `n_records` grounding records over `n_images` distinct PNGs (built once)."""
    root = work / f"convert-{n_images}x{size}"
    img_dir = root / "images"
    done = root / "images.done"
    if not done.exists():
        img_dir.mkdir(parents=True, exist_ok=True)
        _write_small_pngs(img_dir, n_images, size)
        done.write_text("ok\n")
    path = root / f"llava-{n_records}.json"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        for i in range(n_records):
            name = ABNORMALITIES[i % len(ABNORMALITIES)]
            x, y = (i % 37) / 100, (i % 23) / 100
            if i % 10 == 0:
                answer = "No abnormalities or lesions are detected on this Chest X-ray."
            else:
                answer = (f"There is a {name} located at the coordinates [{x:.2f}, {y:.2f}, {x + 0.3:.2f}, "
                          f"{y + 0.25:.2f}] and [{x + 0.4:.2f}, {y + 0.5:.2f}, {x + 0.55:.2f}, {y + 0.7:.2f}].")
            rec = {"id": f"rec-{i}", "image": f"images/{i % n_images}.png", "dataset": "vindr-cxr",
                   "conversations": [{"from": "human", "value": QUESTIONS[i % 4].format(a=name)},
                                     {"from": "gpt", "value": answer}]}
            fh.write(("" if i == 0 else ",\n") + json.dumps(rec))
        fh.write("\n]\n")
    tmp.rename(path)
    return path


def _write_large_images(img_dir: Path, n_images: int, seed: int) -> list[tuple[str, int, int]]:
    """`n_images` files of 1024-2048 px (3 in 4 PNG, 1 in 4 JPEG); returns (name, width, height)."""
    from PIL import Image

    rng = random.Random(seed)
    png_sizes = [(rng.randint(1024, 2048), rng.randint(1024, 2048)) for _ in range(300)]
    jpeg_sizes = [(rng.randint(1024, 2048), rng.randint(1024, 2048)) for _ in range(60)]
    png_parts = [_png_parts(w, h) for w, h in png_sizes]
    jpegs = []
    for w, h in jpeg_sizes:
        buf = io.BytesIO()
        Image.new("L", (w, h), 96).save(buf, format="JPEG", quality=80)
        jpegs.append(buf.getvalue())
    table = []
    for k in range(n_images):
        if k % 4 == 3:
            j = k % len(jpegs)
            name, data, (w, h) = f"{k}.jpg", _distinct_jpeg(jpegs[j], k), jpeg_sizes[j]
        else:
            j = k % len(png_parts)
            name, data, (w, h) = f"{k}.png", _distinct_png(png_parts[j], k), png_sizes[j]
        (img_dir / name).write_bytes(data)
        table.append((name, w, h))
    return table


def check_rows(n_rows: int, images: list[tuple[str, int, int]], img_dir: Path, seed: int = 0,
               distinct_text: bool = False):
    """Yield verl RL rows (ref mode) in medrl's schema."""
    from medrl.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS

    rng = random.Random(seed)
    n_img = len(images)
    for i in range(n_rows):
        k = i % n_img
        refs = [k] + ([(k * 7 + 1) % n_img] if i % 20 == 7 else [])
        name = ABNORMALITIES[rng.randrange(len(ABNORMALITIES))]
        question = QUESTIONS[rng.randrange(4)].format(a=name)
        if len(refs) == 2:
            question = "<image>\nThis is the prior study.\n" + question
        if distinct_text:
            question += f" (study {i})"
        prompt = [{"role": "user", "content": question + "\n" + INSTRUCTION}]
        box = [round(rng.uniform(0, 0.5), 2), round(rng.uniform(0, 0.5), 2)]
        box += [round(box[0] + 0.3, 2), round(box[1] + 0.3, 2)]
        if i % 10 == 4:  # an earlier turn as context, with its own boxes: text differs row to row
            prompt.append({"role": "assistant",
                           "content": f"<think>I look at both lungs.</think><answer>{box}</answer>"})
            prompt.append({"role": "user", "content": "Now locate the same finding again, more tightly."})
        first = images[k]
        yield {
            "data_source": "medrl/grounding",
            "prompt": prompt,
            "images": [{"image": (img_dir / images[r][0]).as_uri(), "min_pixels": QWEN_MIN_PIXELS,
                        "max_pixels": QWEN_MAX_PIXELS} for r in refs],
            "ability": "grounding",
            "reward_model": {"style": "rule", "ground_truth": json.dumps([box])},
            "extra_info": {"index": i, "id": f"row-{i}", "dataset": "vindr-cxr", "split": "train",
                           "width": first[1], "height": first[2], "turn": 1, "n_turns": 1, "position": i,
                           "source": "bench", "image": first[0], "question": question, "answer": ""},
        }


def check_inputs(work: Path, n_rows: int, n_images: int = 20_000, distinct_text: bool = False) -> Path:
    """verl RL parquet of `n_rows` ref-mode rows over `n_images` distinct large images (built once)."""
    from medrl.data.writer import RowGroupWriter, rl_schema

    root = work / f"check-{n_images}"
    img_dir = root / "images"
    table_path = root / "images.json"
    if not table_path.exists():
        img_dir.mkdir(parents=True, exist_ok=True)
        table_path.write_text(json.dumps(_write_large_images(img_dir, n_images, seed=1)))
    images = [tuple(t) for t in json.loads(table_path.read_text())]
    path = root / f"rows-{n_rows}{'-distinct' if distinct_text else ''}.parquet"
    if not path.exists():
        with RowGroupWriter(path, rl_schema("ref"), row_group_size=512) as w:
            for row in check_rows(n_rows, images, img_dir, distinct_text=distinct_text):
                w.write(row)
    return path


def add_scale_arguments(p) -> None:
    """The arguments both scale benchmarks take (sizes, repeats, inputs) and their child-process ones."""
    import argparse

    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=3, help="runs per variant at the smallest size (medians)")
    p.add_argument("--big_repeats", type=int, default=1, help="runs per variant at the larger sizes")
    p.add_argument("--images", type=int, default=20_000, help="distinct image files")
    p.add_argument("--work", default=DEFAULT_WORK, help="folder for the generated inputs (kept and reused)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=DEFAULT_WORK)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = p.parse_args()
    work = Path(args.work)
    for n in args.sizes:
        t0 = time.perf_counter()
        a, b = convert_inputs(work, n), check_inputs(work, n)
        print(f"{n:>9d} records: {a} ({a.stat().st_size / 2**20:.0f} MB), {b} ({b.stat().st_size / 2**20:.0f} MB) "
              f"[{time.perf_counter() - t0:.1f} s]")


if __name__ == "__main__":
    main()

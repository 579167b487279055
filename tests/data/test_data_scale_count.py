"""The fast prompt counter equals verl's count, image tokens included, on thousands of seeded rows."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from medrl.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS
from medrl.data.length import count_prompt_tokens, load_processor
from medrl.data.prompt_length import PromptCounter

FORMATS = [("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "RGB"), ("JPEG", "L"), ("WEBP", "RGB"), ("GIF", "P"), ("BMP", "RGB")]


def qwen_default_processor_dir(model_dir: Path, out: Path) -> Path:
    """A copy of the tiny model's processor with Qwen2.5-VL's default pixel limits (patch 14, merge 2)."""
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg_path = out / "processor_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("image_processor", "video_processor"):
        cfg[key]["size"] = {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS}
    cfg_path.write_text(json.dumps(cfg))
    return out


def _size(rng: random.Random) -> tuple[int, int]:
    u = rng.random()
    if u < 0.05:  # extreme aspect ratios, some beyond the 200:1 both resize rules refuse
        long, short = rng.randint(200, 900), rng.randint(1, 6)
        return (long, short) if rng.random() < 0.5 else (short, long)
    if u < 0.15:  # below every min_pixels: scaled up
        return rng.randint(1, 40), rng.randint(1, 40)
    if u < 0.20:
        return rng.randint(400, 1100), rng.randint(400, 1100)
    return rng.randint(30, 260), rng.randint(30, 260)


def _images(folder: Path, n: int, seed: int) -> list[tuple[Path, bytes]]:
    rng = random.Random(seed)
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        fmt, mode = FORMATS[k % len(FORMATS)]
        buf = io.BytesIO()
        Image.new(mode, _size(rng), 100).save(buf, format=fmt)
        path = folder / f"{k}.{fmt.lower()}"
        path.write_bytes(buf.getvalue())
        out.append((path, buf.getvalue()))
    return out


def _entry(rng: random.Random, path: Path, data: bytes):
    u = rng.random()
    if u < 0.35:
        return {"bytes": data}
    ref = {"image": path.as_uri()}
    if u < 0.55:
        return ref
    if u < 0.60:
        return str(path)  # a plain path string
    if u < 0.63:
        return {"image": path.as_uri(), "resized_height": rng.randint(20, 300), "resized_width": rng.randint(20, 300)}
    ref["min_pixels"] = rng.choice([28 * 28, QWEN_MIN_PIXELS, 100 * 100])
    ref["max_pixels"] = rng.choice([28 * 28 * 4, 12544, 200 * 200, QWEN_MAX_PIXELS])
    return ref


def make_rows(n: int, images: list[tuple[Path, bytes]], seed: int) -> list[dict]:
    """Seeded rows: 0-3 images, one to three turns, varied text; a few with literal image tokens."""
    rng = random.Random(seed)
    words = ["nodule", "opacity", "left", "right", "lower", "lobe", "effusion", "é", "肺", "[0.12, 0.5]", "\n"]
    rows = []
    for i in range(n):
        k = rng.choice([0, 1, 1, 1, 2, 2, 3])
        chosen = [images[rng.randrange(len(images))] for _ in range(k)]
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
        marks = "".join("<image>" for _ in range(k))
        question = marks + "\n" + text if rng.random() < 0.7 else text + " " + marks
        if i % 97 == 5:
            question += " <|placeholder|>"
        prompt = [{"role": "user", "content": question}]
        if rng.random() < 0.2:
            prompt = [{"role": "system", "content": "You are a radiologist."}] + prompt
        if rng.random() < 0.2:
            prompt += [{"role": "assistant", "content": f"<answer>{text[:30]}</answer>"},
                       {"role": "user", "content": "And the other side?"}]
        rows.append({"prompt": prompt, "images": [_entry(rng, p, d) for p, d in chosen]})
    return rows


def _as_bytes(entry) -> bytes:
    if isinstance(entry, dict) and "bytes" in entry:
        return entry["bytes"]
    ref = entry["image"] if isinstance(entry, dict) else entry
    return Path(ref[len("file://"):] if ref.startswith("file://") else ref).read_bytes()


def _verl_count(row: dict, proc) -> int | None:
    try:
        return count_prompt_tokens(row, proc)
    except Exception:  # verl fails on this row (its filter would drop it, its rollout would crash)
        return None


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[tuple[Path, bytes]]:
    return _images(tmp_path_factory.mktemp("count-images"), 240, seed=11)


@pytest.fixture(scope="module")
def qwen_default_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return qwen_default_processor_dir(tiny_model_dir, tmp_path_factory.mktemp("qwen-default") / "m")


@pytest.mark.slow  # 3,300 rows through verl's RLHFDataset (about a minute per processor)
@pytest.mark.parametrize("which,n_rows,seed", [("tiny", 1800, 1), ("qwen_default", 1500, 2)])
def test_fast_count_equals_verls_on_seeded_rows(which, n_rows, seed, images, tiny_model_dir, qwen_default_dir):
    model = tiny_model_dir if which == "tiny" else qwen_default_dir
    proc = load_processor(str(model))
    rows = make_rows(n_rows, images, seed)
    fast = PromptCounter(proc).count_rows(rows)
    compared = multi = errors = fallbacks = 0
    for i, (row, got) in enumerate(zip(rows, fast)):
        want = _verl_count(row, proc)
        if got.fallback:
            assert "<|placeholder|>" in row["prompt"][-1]["content"] or "<|placeholder|>" in row["prompt"][0]["content"]
            fallbacks += 1
            continue
        if got.error:
            assert want is None, f"row {i}: fast path says {got.error!r}, verl counts {want}"
            errors += 1
            continue
        assert got.tokens == want, f"row {i}: fast {got.tokens} != verl {want}: {row}"
        compared += 1
        multi += len(row["images"]) > 1
    # The sample really spans what it claims to: many counted rows, many multi-image rows, some failures.
    assert compared > 0.85 * n_rows and multi > 0.25 * n_rows and errors > 5 and fallbacks > 5


@pytest.mark.slow  # verl's own filter over every row
def test_fast_count_keeps_exactly_the_rows_verls_own_filter_keeps(images, tiny_model_dir, tmp_path):
    """verl's RLHFDataset filter at a limit keeps exactly the rows whose fast count fits it."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    proc = load_processor(str(tiny_model_dir))
    # Rows with images and no literal image tokens (those are counted through verl, not here).
    rows = [r for r in make_rows(400, images, seed=3)
            if r["images"] and "<|placeholder|>" not in json.dumps(r["prompt"])][:150]
    for k, r in enumerate(rows):  # embedded bytes: the parquet then needs no files
        r["images"] = [{"bytes": _as_bytes(e)} for e in r["images"]]
        r["extra_info"] = {"index": k}
    counts = [c.tokens for c in PromptCounter(proc).count_rows(rows)]
    path = tmp_path / "rows.parquet"
    schema = pa.schema([("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                        ("images", pa.list_(pa.struct([("bytes", pa.binary())]))),
                        ("extra_info", pa.struct([("index", pa.int64())]))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    known = sorted(c for c in counts if c is not None)
    for limit in (known[len(known) // 4], known[len(known) // 2], known[-1] - 1):
        config = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "cache_dir": str(tmp_path),
                                   "max_prompt_length": limit, "filter_overlong_prompts": True,
                                   "filter_overlong_prompts_workers": None})
        ds = RLHFDataset(data_files=[str(path)], tokenizer=proc.tokenizer, config=config, processor=proc)
        kept = {row["extra_info"]["index"] for row in ds.dataframe}
        assert kept == {k for k, c in enumerate(counts) if c is not None and c <= limit}, limit

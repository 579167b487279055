"""Benchmark: medrl's streaming converter vs a load-everything reference (json.load + pandas).

Generates a RadVLM-like LLaVA JSON of N grounding records whose images are a few
small PNG files used over and over (the converter never caches images, so each
record still costs an open, a read and a decode), then converts it:

- ``medrl``: `medrl.data.convert` (ijson stream, worker processes, row-group writer),
  run at N/4 and N records to show that peak memory does not grow with the input;
- ``reference``: json.load the whole file, a pandas DataFrame, per record
  PIL open -> RGB -> PNG bytes (how converters commonly fill ``{"bytes": ...}``),
  then DataFrame.to_parquet;
- ``reference-raw``: the same but embedding the file's bytes unchanged (no re-encode),
  to show how much of the gap is the re-encode and how much the pipeline.

Each variant runs in its own subprocess; peak memory is that process's ru_maxrss
(plus the largest worker's, for medrl). Prints medians over --repeats and ratios.

    python benchmarks/bench_convert.py                       # 200k records, 3 repeats
    python benchmarks/bench_convert.py --records 20000 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ABNORMALITIES = ("nodule", "mass", "consolidation", "lung opacity", "pleural effusion")


def generate(work: Path, n: int, n_images: int, size: int) -> Path:
    """Write `n_images` PNGs and an n-record LLaVA JSON array that cycles through them."""
    import numpy as np
    from PIL import Image

    from medrl.data.sample import draw_chest

    rng = np.random.default_rng(0)
    (work / "images").mkdir(parents=True, exist_ok=True)
    for k in range(n_images):
        drawn = draw_chest(rng, 1, (size, size))
        Image.fromarray(drawn.pixels, mode="L").save(work / "images" / f"{k}.png")
    path = work / "all_train_llava.json"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        for i in range(n):
            name = ABNORMALITIES[i % len(ABNORMALITIES)]
            x, y = (i % 37) / 100, (i % 23) / 100
            if i % 10 == 0:
                answer = "No abnormalities or lesions are detected on this Chest X-ray."
            else:
                answer = (f"There is a {name} located at the coordinates [{x:.2f}, {y:.2f}, {x + 0.3:.2f}, "
                          f"{y + 0.25:.2f}] and [{x + 0.4:.2f}, {y + 0.5:.2f}, {x + 0.55:.2f}, {y + 0.7:.2f}].")
            rec = {"id": f"rec-{i}", "image": f"images/{i % n_images}.png", "dataset": "vindr-cxr",
                   "conversations": [{"from": "human", "value": f"<image>\nPlease locate the {name} in this image."},
                                     {"from": "gpt", "value": answer}]}
            fh.write(("" if i == 0 else ",\n") + json.dumps(rec))
        fh.write("\n]\n")
    return path


def run_medrl(json_path: Path, out: Path, workers: int) -> int:
    from medrl.data.convert import ConvertOptions, convert

    s = convert(ConvertOptions(inputs=[str(json_path)], output_dir=str(out), workers=workers, progress=False))
    if s["rejected"]:
        raise SystemExit(f"unexpected rejects: {s['rejects_by_reason']}")
    return sum(s["rows_written"].values())


_BOX = re.compile(r"\[([^\]]+)\]")


def run_reference(json_path: Path, out: Path, reencode: bool) -> int:
    """The straightforward converter: everything in memory, one pandas frame, one to_parquet."""
    import pandas as pd
    from PIL import Image

    with open(json_path, encoding="utf-8") as fh:
        data = json.load(fh)
    df = pd.DataFrame(data)
    base = json_path.parent
    rows = []
    for i, rec in enumerate(df.itertuples(index=False)):
        question, answer = rec.conversations[0]["value"], rec.conversations[1]["value"]
        path = base / rec.image
        img = Image.open(path)
        width, height = img.size
        if reencode:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
            data_bytes = buf.getvalue()
        else:
            img.load()
            data_bytes = path.read_bytes()
        boxes = [[float(v) for v in m.split(",")] for m in _BOX.findall(answer)]
        rows.append({
            "data_source": "medrl/grounding",
            "prompt": [{"role": "user", "content": question}],
            "images": [{"bytes": data_bytes}],
            "ability": "grounding",
            "reward_model": {"style": "rule", "ground_truth": json.dumps(boxes)},
            "extra_info": {"index": i, "id": rec.id, "dataset": rec.dataset, "width": width, "height": height},
        })
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out / "train.parquet")
    return len(rows)


def child(args) -> None:
    """Run one variant in this process and print its figures as one JSON line."""
    t0 = time.perf_counter()
    if args.child == "medrl":
        rows = run_medrl(Path(args.json), Path(args.out), args.workers)
    else:
        rows = run_reference(Path(args.json), Path(args.out), reencode=args.child == "reference")
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "rows": rows, "seconds": seconds,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


def measure(variant: str, json_path: Path, work: Path, workers: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=work))
    cmd = [sys.executable, __file__, "--child", variant, "--json", str(json_path), "--out", str(out),
           "--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["file_mb"] = (out / "train.parquet").stat().st_size / 2**20
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=16, help="distinct PNG files the records cycle through")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--variants", nargs="+", default=["medrl", "reference", "reference-raw"])
    p.add_argument("--work", default=None, help="folder for the generated data (default: a temp folder)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-convert-"))
    small_n = max(1, args.records // 4)
    t0 = time.perf_counter()
    big = generate(work / "big", args.records, args.images, args.image_size)
    small = generate(work / "small", small_n, args.images, args.image_size)
    print(f"generated {args.records} + {small_n} records in {time.perf_counter() - t0:.1f} s "
          f"({big.stat().st_size / 2**20:.1f} MB JSON; {args.images} PNGs of {args.image_size}px); "
          f"{os.cpu_count()} CPUs, medrl workers={args.workers}")

    results: dict[str, list[dict]] = {}
    plan = [(v, big) for v in args.variants]
    if "medrl" in args.variants:
        plan.append(("medrl@N/4", small))
    for rep in range(args.repeats):
        for variant, path in plan:
            res = measure(variant.split("@")[0], path, work, args.workers)
            results.setdefault(variant, []).append(res)
            print(f"  run {rep + 1} {variant:14s} {res['rows']:>8d} rows  {res['seconds']:7.1f} s  "
                  f"{res['rows'] / res['seconds']:9.0f} rec/s  peak {res['rss_mb']:7.0f} MB"
                  + (f" (+ workers {res['worker_rss_mb']:.0f} MB each)" if variant.startswith("medrl") else ""),
                  flush=True)

    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "rss_mb", "worker_rss_mb", "rows")}
           for v, rs in results.items()}
    print(f"\nmedians over {args.repeats} run(s), {args.records} records:")
    print(f"{'variant':14s} {'rec/s':>9s} {'peak MB':>9s} {'worker MB':>10s}")
    for v, m in med.items():
        print(f"{v:14s} {m['rows'] / m['seconds']:9.0f} {m['rss_mb']:9.0f} "
              f"{(m['worker_rss_mb'] if v.startswith('medrl') else float('nan')):10.0f}")
    if "medrl" in med:
        mm = med["medrl"]
        for ref in ("reference", "reference-raw"):
            if ref in med:
                speed = med[ref]["seconds"] / mm["seconds"]
                mem = med[ref]["rss_mb"] / mm["rss_mb"]
                print(f"throughput medrl / {ref}: {speed:.2f}x   peak memory {ref} / medrl: {mem:.1f}x")
        if "medrl@N/4" in med:
            growth = mm["rss_mb"] / med["medrl@N/4"]["rss_mb"]
            print(f"medrl peak memory at N vs N/4: {mm['rss_mb']:.0f} MB vs {med['medrl@N/4']['rss_mb']:.0f} MB "
                  f"({growth:.2f}x for 4x the input)")
        total = mm["rss_mb"] + args.workers * mm["worker_rss_mb"]
        print(f"medrl total peak (main + {args.workers} workers, upper bound): {total:.0f} MB "
              f"({'under' if total < 1024 else 'OVER'} the 1 GB target)")


if __name__ == "__main__":
    main()

"""Benchmark: `medrl check` at 100,000 and 1,000,000 rows, against the full verl load.

Inputs (built once under --work by scale_inputs.py, then reused): verl RL parquets of
`--image_mode ref` rows over 20,000 distinct 1024-2048 px images (PNG and JPEG; 5 % of
rows with two images, 10 % with an earlier turn whose text differs row to row). The
processor is configured like Qwen2.5-VL's (patch 14, merge 2, min_pixels 3136,
max_pixels 12845056) around the tiny model's tokenizer and chat template.

Variants, each in its own subprocess:
- ``fast``: `medrl check --processor P --max_prompt_length L` (the default path): rows/s of
  the scan, of the proof through verl, and of the whole run; peak memory;
- ``fast-distinct`` (at the smallest size): the same on rows whose prompts all differ, so
  no text is rendered or tokenized twice (the worst case for the counter);
- ``full``: `medrl check --full` (every row through verl's RLHFDataset) on the first
  `--full_rows` rows: the reference the fast path replaces.

Target (issue 13): >= 2,000 rows/s on 2 cores, memory flat in the number of rows.

    python benchmarks/bench_check.py                           # 100k x 3 repeats, 1M once
    python benchmarks/bench_check.py --sizes 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_inputs import add_scale_arguments, check_inputs  # noqa: E402

TARGET = 2_000
LIMIT = 8192  # data.max_prompt_length: 1024-2048 px images are 1,300-5,300 tokens each


def qwen_like_processor(work: Path) -> Path:
    """The tiny model's tokenizer and template with Qwen2.5-VL's image processor settings (built once)."""
    from medrl.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS
    from medrl.training.tiny_model import build_tiny_model

    out = work / "qwen2.5-vl-like"
    cfg_path = out / "processor_config.json"
    if not cfg_path.exists():
        build_tiny_model(out)
        cfg = json.loads(cfg_path.read_text())
        for key in ("image_processor", "video_processor"):
            cfg[key].update(patch_size=14, merge_size=2,
                            size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS})
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def child(args) -> None:
    """Run one check in this process and print its figures as one JSON line."""
    from medrl.data.check import check_file

    t0 = time.perf_counter()
    kw = {} if args.child == "full" else {"workers": args.workers}
    path = args.data
    if args.child == "full":  # the reference on the first rows only: it is hours at full size
        import pyarrow.parquet as pq

        path = str(Path(args.out) / "head.parquet")
        pq.write_table(pq.ParquetFile(args.data).read_row_groups([0]).slice(0, args.full_rows), path)
    report = check_file(path, processor=args.processor, max_prompt_length=LIMIT, progress=False,
                        full=args.child == "full", **kw)
    seconds = time.perf_counter() - t0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "rows": report["rows"], "seconds": seconds, "phases": report.get("seconds", {}),
        "problems": {k: v["count"] for k, v in report["problems"].items()},
        "verified": report.get("verified"), "max_tokens": (report.get("lengths") or {}).get("max"),
        "rss_mb": me.ru_maxrss / 1024, "worker_rss_mb": kids.ru_maxrss / 1024,
    }))


def measure(variant: str, data: Path, processor: Path, workers: int, full_rows: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-check-") as out:
        cmd = [sys.executable, __file__, "--child", variant, "--data", str(data), "--processor", str(processor),
               "--workers", str(workers), "--full_rows", str(full_rows), "--out", out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _line(n: int, rep: int, v: str, r: dict) -> str:
    ph = r["phases"]
    scan = f"scan {r['rows'] / ph['scan']:7.0f} rows/s, proof {ph.get('prove', 0):5.1f} s" if "scan" in ph else ""
    return (f"  {n:>8d} run {rep + 1} {v:13s} {r['seconds']:7.1f} s {r['rows'] / r['seconds']:7.1f} rows/s  {scan}  "
            f"peak {r['rss_mb']:.0f} MB (+ workers {r['worker_rss_mb']:.0f} MB)  problems {r['problems']}  "
            f"proof {r['verified']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scale_arguments(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--full_rows", type=int, default=200, help="rows the --full reference checks")
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--processor", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    work = Path(args.work)
    sizes = sorted(args.sizes)
    t0 = time.perf_counter()
    processor = qwen_like_processor(work)
    data = {n: check_inputs(work, n, args.images) for n in sizes}
    distinct = check_inputs(work, sizes[0], args.images, distinct_text=True)
    print(f"inputs ready in {time.perf_counter() - t0:.1f} s ({', '.join(str(n) for n in sizes)} rows over "
          f"{args.images} distinct 1024-2048 px images); {os.cpu_count()} CPUs, workers={args.workers}; "
          f"max_prompt_length {LIMIT}")
    results: dict[tuple[str, int], list[dict]] = {}
    for n in sizes:
        plan = [("fast", data[n])]
        if n == sizes[0]:
            plan += [("fast-distinct", distinct), ("full", data[n])]
        for rep in range(args.repeats if n == sizes[0] else args.big_repeats):
            for v, path in plan:
                r = measure("full" if v == "full" else "fast", path, processor, args.workers, args.full_rows)
                results.setdefault((v, n), []).append(r)
                print(_line(n, rep, v, r), flush=True)

    print("\nmedians:")
    med = {}
    for (v, n), rs in results.items():
        m = {k: statistics.median(r[k] for r in rs) for k in ("seconds", "rss_mb", "worker_rss_mb")}
        m["rows"] = rs[0]["rows"]
        m["scan"] = statistics.median(r["phases"].get("scan", r["seconds"]) for r in rs)
        m["prove"] = statistics.median(r["phases"].get("prove", 0.0) for r in rs)
        med[(v, n)] = m
        print(f"{v:13s} {n:>8d} rows: {m['rows'] / m['seconds']:7.1f} rows/s overall, scan "
              f"{m['rows'] / m['scan']:7.0f} rows/s, proof {m['prove']:.1f} s; peak {m['rss_mb']:.0f} MB main, "
              f"{m['worker_rss_mb']:.0f} MB per worker")
    for n in sizes:
        rate = med[("fast", n)]["rows"] / med[("fast", n)]["seconds"]
        print(f"check at {n} rows: {rate:.0f} rows/s (target {TARGET}: {'MET' if rate >= TARGET else 'MISSED'})")
    if ("full", sizes[0]) in med:
        full = med[("full", sizes[0])]
        fast = med[("fast", sizes[0])]
        print(f"fast / --full: {(fast['rows'] / fast['seconds']) / (full['rows'] / full['seconds']):.0f}x rows/s "
              f"(--full: {full['rows'] / full['seconds']:.1f} rows/s on {full['rows']} rows)")
    if len(sizes) > 1:
        lo, hi = med[("fast", sizes[0])], med[("fast", sizes[-1])]
        print(f"peak memory {sizes[0]} -> {sizes[-1]} rows: main {lo['rss_mb']:.0f} -> {hi['rss_mb']:.0f} MB, "
              f"worker {lo['worker_rss_mb']:.0f} -> {hi['worker_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()

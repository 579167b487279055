"""Benchmark: medrl's converter against a seed-style reference, at 100,000 and 1,000,000 records.

Inputs (built once under --work by scale_inputs.py, then reused): RadVLM-style LLaVA JSON
arrays of grounding records over 20,000 distinct PNG files (record i uses image i % 20,000),
so parquet cannot fold repeated image bytes into one value.

Variants, each in its own subprocess (peak memory = that process's ru_maxrss, plus the
largest worker's for medrl):
- ``reference``: the seed scripts' way: json.load the whole file, a pandas DataFrame, per
  record PIL's lazy open for the size and the file's bytes embedded unchecked, then
  DataFrame.to_parquet;
- ``medrl``: `medrl prepare grounding` (streamed JSON, worker processes, every image's
  integrity checked: each PNG's CRCs and pixel data, PIL's decode for other formats);
- ``medrl-ref``: the same with ``--image_mode ref`` (image headers and file ends only).

Targets (issues 13 and 22): medrl >= 2x the reference's throughput, measured in the same
run; medrl-ref >= 30,000 records/s; peak memory (main process and largest worker) under
500 MB at 1M records. Every figure line carries the load average when it ran: on a shared
machine a busy core changes wall times far more than any code change, so compare the
paired ratios, not one run's seconds.

    python benchmarks/bench_convert.py                                  # 100k x 3 repeats, 1M once
    python benchmarks/bench_convert.py --sizes 100000 --repeats 1       # quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_inputs import add_scale_arguments, convert_inputs  # noqa: E402

TARGET_RATIO = 2.0
TARGET_REF_RATE = 30_000
TARGET_PEAK_MB = 500
_BOX = re.compile(r"\[([^\]]+)\]")


def run_medrl(json_path: Path, out: Path, workers: int, image_mode: str) -> int:
    from medrl.data.convert import ConvertOptions, convert
    from medrl.data.images import ImageOptions
    from medrl.data.records import RecordOptions

    record = RecordOptions(images=ImageOptions(mode=image_mode))
    s = convert(ConvertOptions(inputs=[str(json_path)], output_dir=str(out), workers=workers, progress=False,
                               record=record))
    if s["rejected"]:
        raise SystemExit(f"unexpected rejects: {s['rejects_by_reason']}")
    return sum(s["rows_written"].values())


def run_reference(json_path: Path, out: Path) -> int:
    """The seed scripts' converter: everything in memory, image bytes embedded unchecked."""
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
        with Image.open(path) as img:  # lazy: reads the header only
            width, height = img.size
        boxes = [[float(v) for v in m.split(",")] for m in _BOX.findall(answer)]
        rows.append({
            "data_source": "medrl/grounding",
            "prompt": [{"role": "user", "content": question}],
            "images": [{"bytes": path.read_bytes()}],
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
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    if args.child == "reference":
        rows = run_reference(Path(args.json), Path(args.out))
    else:
        rows = run_medrl(Path(args.json), Path(args.out), args.workers, "ref" if args.child == "medrl-ref" else "embed")
    seconds = time.perf_counter() - t0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "rows": rows, "seconds": seconds,
        "cpu": me.ru_utime + me.ru_stime - c0.ru_utime - c0.ru_stime + kids.ru_utime + kids.ru_stime,
        "rss_mb": me.ru_maxrss / 1024, "worker_rss_mb": kids.ru_maxrss / 1024,
    }))


def measure(variant: str, json_path: Path, scratch: Path, workers: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=scratch))
    cmd = [sys.executable, __file__, "--child", variant, "--json", str(json_path), "--out", str(out),
           "--workers", str(workers)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["file_mb"] = (out / "train.parquet").stat().st_size / 2**20
    finally:
        shutil.rmtree(out, ignore_errors=True)  # a million embedded images is gigabytes
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_scale_arguments(p)
    p.add_argument("--workers", type=int, default=1, help="medrl's --workers (its default is 1)")
    p.add_argument("--reference_sizes", type=int, nargs="*", default=None,
                   help="sizes the reference runs at (default: the smallest; it holds everything in memory)")
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    work = Path(args.work)
    sizes = sorted(args.sizes)
    ref_sizes = set(args.reference_sizes if args.reference_sizes is not None else sizes[:1])
    t0 = time.perf_counter()
    inputs = {n: convert_inputs(work, n, args.images) for n in sizes}
    print(f"inputs ready in {time.perf_counter() - t0:.1f} s: " + ", ".join(
        f"{n} records ({inputs[n].stat().st_size / 2**20:.0f} MB JSON)" for n in sizes)
        + f" over {args.images} distinct PNGs; {os.cpu_count()} CPUs, medrl workers={args.workers}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-convert-out-"))
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for n in sizes:
            variants = (["reference"] if n in ref_sizes else []) + ["medrl", "medrl-ref"]
            for rep in range(args.repeats if n == sizes[0] else args.big_repeats):
                for v in variants:  # interleaved, so drift in machine load hits every variant alike
                    res = measure(v, inputs[n], scratch, args.workers)
                    results.setdefault((v, n), []).append(res)
                    res["load"] = os.getloadavg()[0]
                    print(f"  {n:>8d} run {rep + 1} {v:10s} {res['seconds']:7.1f} s  "
                          f"{res['rows'] / res['seconds']:8.0f} rec/s  cpu {res['cpu']:6.1f} s  peak "
                          f"{res['rss_mb']:6.0f} MB" + (f" (+ workers {res['worker_rss_mb']:.0f} MB each)"
                                                        if v != "reference" else "")
                          + f"  [load {res['load']:.1f} on {os.cpu_count()} CPUs]", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = {key: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "cpu", "rss_mb", "worker_rss_mb", "rows")}
           for key, rs in results.items()}
    print(f"\nmedians ({args.repeats} run(s) at {sizes[0]}, {args.big_repeats} at larger sizes):")
    print(f"{'variant':10s} {'records':>9s} {'rec/s':>9s} {'cpu s':>7s} {'peak MB':>8s} {'worker MB':>10s}")
    for (v, n), m in med.items():
        print(f"{v:10s} {n:9d} {m['rows'] / m['seconds']:9.0f} {m['cpu']:7.1f} {m['rss_mb']:8.0f} "
              f"{m['worker_rss_mb'] if v != 'reference' else float('nan'):10.0f}")
    for n in sorted(ref_sizes):
        if ("reference", n) in med:
            # Each run of medrl against the reference run just before it: drift in load cancels out.
            ratio = statistics.median(r["seconds"] / m["seconds"]
                                      for r, m in zip(results[("reference", n)], results[("medrl", n)]))
            cpu = med[("reference", n)]["cpu"] / med[("medrl", n)]["cpu"]
            print(f"throughput medrl / reference at {n}: {ratio:.2f}x wall (median of paired runs), {cpu:.2f}x CPU "
                  f"(target {TARGET_RATIO}x wall: {'MET' if ratio >= TARGET_RATIO else 'MISSED'})")
    for n in sizes:
        rate = med[("medrl-ref", n)]["rows"] / med[("medrl-ref", n)]["seconds"]
        print(f"--image_mode ref at {n}: {rate:.0f} records/s (target {TARGET_REF_RATE}: "
              f"{'MET' if rate >= TARGET_REF_RATE else 'MISSED'})")
    for v in ("medrl", "medrl-ref"):
        top = med[(v, sizes[-1])]
        peak = max(top["rss_mb"], top["worker_rss_mb"])
        print(f"{v} peak memory at {sizes[-1]}: {peak:.0f} MB (target < {TARGET_PEAK_MB}: "
              f"{'MET' if peak < TARGET_PEAK_MB else 'MISSED'})")
    if len(sizes) > 1:
        for v in ("medrl", "medrl-ref"):
            lo, hi = med[(v, sizes[0])], med[(v, sizes[-1])]
            print(f"{v} peak memory {sizes[0]} -> {sizes[-1]} records: main {lo['rss_mb']:.0f} -> {hi['rss_mb']:.0f} MB, "
                  f"worker {lo['worker_rss_mb']:.0f} -> {hi['worker_rss_mb']:.0f} MB "
                  f"({hi['rss_mb'] / lo['rss_mb']:.2f}x main for {sizes[-1] / sizes[0]:.0f}x the input)")


if __name__ == "__main__":
    main()

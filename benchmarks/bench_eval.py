"""Evaluation speed: scoring + task metrics per row, and tiny-model generation by batch size.

Prints medians of repeated runs. Usage: python benchmarks/bench_eval.py [--rows 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path


def _rows(n: int):
    from medrl.evaluation.rows import EvalRow

    rnd = random.Random(0)
    rows, answers = [], {}
    for i in range(n):
        if i % 2:
            x, y = rnd.random() * 0.5, rnd.random() * 0.5
            truth = [[x, y, x + 0.3, y + 0.3]] * (1 + i % 3)
            ans = f"<think>look</think><answer>[{x + 0.02:.2f}, {y:.2f}, {x + 0.3:.2f}, {y + 0.28:.2f}]</answer>"
            row = EvalRow(f"{i}", i, "medrl/grounding", [], [], json.dumps(truth), {"width": 512, "height": 512},
                          "grounding")
        else:
            ref = "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal. " * 3
            ans = "<think>look</think><answer>" + " ".join(rnd.sample(ref.split(), 20)) + "</answer>"
            row = EvalRow(f"{i}", i, "medrl/report", [], [], ref, {}, "report")
        rows.append(row)
        answers[row.key] = ans
    return rows, answers


def bench_scoring(n: int, repeats: int) -> None:
    from medrl.evaluation.evaluate import EvalOptions, score_rows, summarise

    rows, answers = _rows(n)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        recs = score_rows(rows, answers, EvalOptions())
        summarise(recs)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"scoring + metrics + summary: {n} rows in {med:.3f} s (median of {repeats}) = {n / med:,.0f} rows/s")


def bench_generation(repeats: int) -> None:
    from PIL import Image

    from medrl.evaluation.generate import HFGenerator
    from medrl.evaluation.rows import EvalRow
    from medrl.training.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "m")
        img = Image.new("RGB", (128, 128), (60, 60, 60))
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Locate the nodule."}]}]
        rows = [EvalRow(str(i), i, "medrl/grounding", msgs, [img], "[]") for i in range(16)]
        gen = HFGenerator(str(model))
        gen.generate(rows[:2], 4)  # warm-up
        per_row = {}
        for bs in (1, 4, 16):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for s in range(0, len(rows), bs):
                    gen.generate(rows[s:s + bs], 32)
                times.append((time.perf_counter() - t0) / len(rows))
            per_row[bs] = statistics.median(times)
            print(f"tiny model, transformers generate, 32 new tokens, batch {bs:>2}: "
                  f"{per_row[bs] * 1000:.1f} ms/row (median of {repeats})")
        print(f"batch 16 vs batch 1: {per_row[1] / per_row[16]:.1f}x faster per row")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-generation", action="store_true")
    args = ap.parse_args()
    bench_scoring(args.rows, args.repeats)
    if not args.skip_generation:
        bench_generation(args.repeats)

"""Throughput of medrl's rewards: 10,000 rollouts per reward on one core, beside per-sample references.

    python benchmarks/bench_rewards.py [--n 10000] [--repeats 5] [--ref-n 1000] [--only giou,f1iou,size]

References, run in the same process on the same rollouts:
- IoU: pycocotools mAP@0.5 per sample on a dummy canvas, as VLM-R1 scores multi-box answers
  (optional: `pip install pycocotools`; skipped when missing). Being slow, it runs on `--ref-n` rollouts.
- BLEU: plain nltk `sentence_bleu(..., SmoothingFunction().method1)` per sample, on all rollouts;
  the largest difference from medrl's BLEU is printed too.
- Region IoU (`iou_mode: region`, rollouts with 1-5 boxes a side): shapely's polygon union of the
  same parsed boxes (optional: `pip install shapely`); the largest difference is printed too.
Targets (issue 3): IoU >= 50,000 rollouts/s; BLEU and enhanced >= 5,000 rollouts/s; (issue 14) region
IoU >= 20,000 rollouts/s for up to 5 boxes a side; (issue 23) the grounding candidates giou, diou, f1iou,
f1iou_soft, size and size_distance >= 20,000 rollouts/s on the grounding rollouts; judged on
rollouts per CPU-second of this process (what one dedicated core does); wall-clock rates are
printed beside them and fall when other processes share the core.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import time

from tqdm import tqdm

TARGETS = {"iou": 50_000, "bleu": 5_000, "enhanced": 5_000, "region": 20_000, "giou": 20_000, "diou": 20_000,
           "f1iou": 20_000, "f1iou_soft": 20_000, "size": 20_000, "size_distance": 20_000}
SENTENCES = [
    "The heart size is normal.", "There is mild cardiomegaly.", "Small left pleural effusion.",
    "No pneumothorax is seen.", "Right lower lobe consolidation, concerning for pneumonia.",
    "The lungs are clear.", "Bibasilar atelectasis.", "Mediastinal contours are within normal limits.",
    "A 2 cm nodule in the right upper lobe.", "Degenerative changes of the thoracic spine.",
]
THINK = ("First I examine the lungs systematically, then the heart and mediastinum. The opacity in the {side} "
         "lower lobe suggests {abn}; the differential includes atelectasis because the volume is reduced.")


def _jitter(rnd: random.Random, box: list[float], s: float) -> list[float]:
    x1, y1, x2, y2 = (min(1.0, max(0.0, v + rnd.uniform(-s, s))) for v in box)
    return [round(min(x1, x2), 2), round(min(y1, y2), 2), round(max(x1, x2), 2), round(max(y1, y2), 2)]


def grounding_rollouts(n: int, group: int = 8, seed: int = 0) -> list[tuple[str, str, str, dict]]:
    """GRPO-like grounding rollouts: n/group prompts, `group` samples each (same ground truth string)."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(max(1, n // group)):
        k = rnd.choices([0, 1, 2, 3], weights=[2, 5, 2, 1])[0]
        true = []
        for _ in range(k):
            x, y = rnd.uniform(0.05, 0.7), rnd.uniform(0.05, 0.7)
            true.append([round(x, 2), round(y, 2), round(x + rnd.uniform(0.05, 0.25), 2),
                         round(y + rnd.uniform(0.05, 0.25), 2)])
        gt = json.dumps(true)
        for _ in range(group):
            think = THINK.format(side=rnd.choice(["left", "right"]), abn=rnd.choice(["consolidation", "effusion"]))
            mode = rnd.random()
            if not true and mode < 0.6:
                answer = "No abnormalities or lesions are detected on this Chest X-ray."
            else:
                boxes = [_jitter(rnd, b, 0.05) for b in true if rnd.random() < 0.85]
                if mode > 0.8:
                    boxes.append(_jitter(rnd, [0.4, 0.4, 0.6, 0.6], 0.2))
                answer = "Consolidation located at " + " and ".join(
                    "[" + ", ".join(f"{v:.2f}" for v in b) + "]" for b in boxes) if boxes else "Nothing definite."
            rows.append(("medrl/grounding", f"<think>{think}</think><answer>{answer}</answer>", gt,
                         {"width": 1024, "height": 1024}))
    return rows[:n]


def region_rollouts(n: int, group: int = 8, seed: int = 2) -> list[tuple[str, str, str, dict]]:
    """GRPO-like multi-lesion rollouts: 1-5 true boxes, answers of 1-5 boxes (jittered, merged, split, extra)."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(max(1, n // group)):
        true = []
        for _ in range(rnd.randint(1, 5)):
            x, y = rnd.uniform(0.05, 0.7), rnd.uniform(0.05, 0.7)
            true.append([round(x, 2), round(y, 2), round(x + rnd.uniform(0.05, 0.25), 2),
                         round(y + rnd.uniform(0.05, 0.25), 2)])
        for _ in range(group):
            boxes = [_jitter(rnd, b, 0.05) for b in true]
            if len(boxes) > 1 and rnd.random() < 0.3:  # one box over two lesions
                a, b = boxes.pop(), boxes.pop()
                boxes.append([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
            if rnd.random() < 0.3:  # one lesion split in two
                x1, y1, x2, y2 = boxes.pop(0)
                mid = round((x1 + x2) / 2, 2)
                boxes += [[x1, y1, mid, y2], [mid, y1, x2, y2]]
            while len(boxes) < 5 and rnd.random() < 0.3:
                boxes.append(_jitter(rnd, [0.4, 0.4, 0.6, 0.6], 0.2))
            rnd.shuffle(boxes)
            answer = "Opacities located at " + " and ".join("[" + ", ".join(f"{v:.2f}" for v in b) + "]"
                                                             for b in boxes[:5])
            rows.append(("medrl/grounding", f"<think>Both lungs.</think><answer>{answer}</answer>", json.dumps(true),
                         {"width": 1024, "height": 1024}))
    return rows[:n]


def shapely_region_iou(pred: list, true: list) -> float:
    """IoU of the polygon unions of two box lists with shapely (the reference for region IoU)."""
    import shapely

    if not pred or not true:
        return 0.0
    p = shapely.union_all([shapely.box(*b) for b in pred])
    t = shapely.union_all([shapely.box(*b) for b in true])
    union = p.union(t).area
    return p.intersection(t).area / union if union > 0 else 0.0


def report_rollouts(n: int, group: int = 8, seed: int = 1) -> list[tuple[str, str, str, dict]]:
    """GRPO-like report rollouts: a reference of 3-6 sentences, samples that keep, drop or swap sentences."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(max(1, n // group)):
        ref_s = rnd.sample(SENTENCES, rnd.randint(3, 6))
        ref = " ".join(ref_s)
        for _ in range(group):
            hyp = [s if rnd.random() < 0.7 else rnd.choice(SENTENCES) for s in ref_s if rnd.random() < 0.9]
            rows.append(("medrl/report", f"<think>Reading the film.</think><answer>{' '.join(hyp)}</answer>", ref, {}))
    return rows[:n]


def time_it(fn, rows, repeats: int, desc: str) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) over `repeats` passes of `fn` over all rows.

    CPU seconds are what one dedicated core would need: on a shared machine the wall
    clock also counts the time other processes held the core.
    """
    wall, cpu = [], []
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        t0, c0 = time.perf_counter(), time.process_time()
        for r in rows:
            fn(*r)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def coco_map50(pred: list, true: list) -> float:
    """VLM-R1-style per-sample mAP@0.5 with pycocotools on a 1000x1000 canvas."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not pred or not true:
        return 0.0
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 1000, "height": 1000}], "categories": [{"id": 1, "name": "x"}],
                  "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                   "bbox": [b[0] * 1000, b[1] * 1000, (b[2] - b[0]) * 1000, (b[3] - b[1]) * 1000],
                                   "area": (b[2] - b[0]) * (b[3] - b[1]) * 1e6} for i, b in enumerate(true)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": 1, "category_id": 1, "score": 1.0,
                          "bbox": [b[0] * 1000, b[1] * 1000, (b[2] - b[0]) * 1000, (b[3] - b[1]) * 1000]}
                         for b in pred])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(0.0, float(ev.stats[1]))


def main() -> None:
    """Run every reward and its reference; print medians, rates and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-n", type=int, default=1000, help="rollouts for the (slow) pycocotools reference")
    ap.add_argument("--only", default=None, metavar="NAMES",
                    help=f"comma-separated rewards to run (of {', '.join(TARGETS)}, format); default all")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    unknown = sorted((only or set()) - set(TARGETS) - {"format"})
    if unknown:
        ap.error(f"--only: unknown reward(s) {unknown}")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says

    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    from medrl.boxes import parse_boxes
    from medrl.rewards import bleu, enhanced, f1iou, format as fmt, giou, iou, size
    from medrl.rewards.answer import extract_answer

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),)
    ground, report, multi = grounding_rollouts(args.n), report_rollouts(args.n), region_rollouts(args.n)
    results = []

    def add(name, rows, fn, ref_name=None, ref_fn=None, ref_rows=None):
        if only is not None and name not in only:
            return
        for r in rows[:200]:
            fn(*r)  # warm caches and imports outside the timing
        sec, cpu = time_it(fn, rows, args.repeats, name)
        rate = len(rows) / cpu
        ref_rate = None
        if ref_fn is not None:
            ref_rows = ref_rows or rows
            _, ref_cpu = time_it(ref_fn, ref_rows, max(1, min(args.repeats, 3)), ref_name)
            ref_rate = len(ref_rows) / ref_cpu
        results.append((name, len(rows), sec, len(rows) / sec, rate, TARGETS.get(name), ref_name, ref_rate))

    for name, fn in (("giou", giou.compute_score), ("diou", lambda *r: giou.compute_score(*r, kind="diou")),
                     ("f1iou", f1iou.compute_score), ("f1iou_soft", lambda *r: f1iou.compute_score(*r, mode="soft")),
                     ("size", size.compute_score),
                     ("size_distance", lambda *r: size.compute_score(*r, pairing="distance"))):
        add(name, ground, fn)
    try:
        import pycocotools  # noqa: F401

        def coco_ref(ds, sol, gt, info):
            coco_map50(parse_boxes(extract_answer(sol)), json.loads(gt))

        iou_ref = ("pycocotools mAP@0.5", coco_ref, ground[:args.ref_n])
    except ImportError:
        print("pycocotools not installed: IoU runs without its reference (pip install pycocotools)")
        iou_ref = (None, None, None)
    add("iou", ground, iou.compute_score, *iou_ref)

    smooth = SmoothingFunction().method1

    def nltk_ref(ds, sol, gt, info):
        hyp, ref = bleu.normalize_text(extract_answer(sol)), bleu.normalize_text(gt)
        return sentence_bleu([ref], hyp, smoothing_function=smooth) if hyp and ref else 0.0

    add("bleu", report, bleu.compute_score, "nltk sentence_bleu", nltk_ref)
    add("enhanced", ground, enhanced.compute_score)

    def region(ds, sol, gt, info):
        return iou.compute_score(ds, sol, gt, info, iou_mode="region")

    region_diff = None
    try:
        import shapely  # noqa: F401

        def shapely_ref(ds, sol, gt, info):
            return shapely_region_iou(parse_boxes(extract_answer(sol)), json.loads(gt))

        add("region", multi, region, "shapely polygon union", shapely_ref, multi[:args.ref_n])
        region_diff = None if only is not None and "region" not in only else max(abs(region(*r)["iou"] - shapely_ref(*r)) for r in multi[:args.ref_n])
    except ImportError:
        print("shapely not installed: region IoU runs without its reference (pip install shapely)")
        add("region", multi, region)
    add("format", ground, fmt.compute_score)

    diff = None if only is not None and "bleu" not in only else max(abs(bleu.compute_score(*r)["score"] - (1.0 if bleu.normalize_text(extract_answer(r[1]))
                                                      == bleu.normalize_text(r[2]) else nltk_ref(*r)))
               for r in report)
    print(f"\nrewards pinned to one core, {args.n} rollouts each, median of {args.repeats} passes")
    print(f"load average before the run: {load[0]:.2f} (a busy machine lowers every figure)")
    print("rates are rollouts per CPU-second of this process (= one dedicated core); wall figures beside them")
    print(f"{'reward':<10}{'rollouts':>9}{'wall s':>8}{'wall /s':>10}{'CPU /s':>10}{'target':>9}{'meets':>7}"
          f"  {'reference':<22}{'ref rollouts/s':>15}{'speed-up':>10}")
    for name, n, sec, wall_rate, rate, target, ref_name, ref_rate in results:
        meets = "-" if target is None else ("yes" if rate >= target else "NO")  # median CPU-time rate
        ref_txt = f"{ref_rate:>15,.0f}{rate / ref_rate:>9.1f}x" if ref_rate else f"{'-':>15}{'-':>10}"
        print(f"{name:<10}{n:>9}{sec:>8.3f}{wall_rate:>10,.0f}{rate:>10,.0f}{(target or 0):>9,}{meets:>7}"
              f"  {ref_name or '-':<22}{ref_txt}")
    if diff is not None:
        print(f"largest |medrl BLEU - nltk BLEU| over the report rollouts: {diff:.2e}")
    if region_diff is not None:
        print(f"largest |medrl region IoU - shapely| over {min(args.ref_n, len(multi))} region rollouts: "
              f"{region_diff:.2e}")


if __name__ == "__main__":
    main()

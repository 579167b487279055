"""Task metrics for evaluation reports: grounding IoU / accuracy / mAP@0.5, report BLEU-1..4 / ROUGE-L.

Grounding IoU is reported both ways: `iou` matches boxes one to one, `region_iou`
compares the union of predicted boxes with the union of true boxes
(`medrl.rewards.region_iou`).

mAP@0.5 follows RadVLM's evaluation: per sample, VOC-style average precision at
IoU 0.5 (predictions in the order the model wrote them, each matched greedily to
the best still-unmatched true box; all-point interpolated area under the
precision-recall curve), then the mean over samples. A sample where either side
has no box scores 0, so a correct "no finding" earns nothing unless
`credit_no_finding` is set, which scores it 1 when the truth has no box and the
answer draws none and states no finding.

Box size: `area_ratio` per sample is the predicted / true area of the one-to-one IoU-matched
boxes (`medrl.boxes.matched_area_ratio`, the rewards' `area_ratio` key); reports give its median
and a plain warning when it leaves [0.67, 1.5] (`area_ratio_note`).
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from medrl.boxes import Box, iou, match_boxes, matched_area_ratio

Boxes = Sequence[Sequence[float]]


def average_precision(pred: Boxes, true: Boxes, threshold: float = 0.5) -> float:
    """VOC all-point AP of ordered predictions against true boxes at an IoU threshold; 0 if either is empty."""
    if not pred or not true:
        return 0.0
    used = [False] * len(true)
    tp: list[int] = []
    for p in pred:
        best, best_j = 0.0, -1
        for j, t in enumerate(true):
            v = iou(p, t)
            if not used[j] and v > best:
                best, best_j = v, j
        if best_j >= 0 and best >= threshold:
            used[best_j] = True
            tp.append(1)
        else:
            tp.append(0)
    # Precision/recall after each prediction, then the area under the monotone precision envelope.
    recalls, precisions, hits = [], [], 0
    for k, t in enumerate(tp, start=1):
        hits += t
        recalls.append(hits / len(true))
        precisions.append(hits / k)
    mrec = [0.0] + recalls + [1.0]
    mpre = [0.0] + precisions + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def sample_ap(pred: Boxes, true: Boxes, no_finding: bool = False, credit_no_finding: bool = False,
              threshold: float = 0.5) -> float:
    """One sample's AP as RadVLM scores it, optionally crediting a correct no-finding answer with 1."""
    if not true and not pred:
        return 1.0 if (credit_no_finding and no_finding) else 0.0
    return average_precision(pred, true, threshold)


def mean_matched_iou(pred: Boxes, true: Boxes) -> float:
    """Sum of one-to-one matched IoUs / max(#pred, #true): misses and extra boxes both count (0 if both empty)."""
    from medrl.rewards.iou import matched_iou

    return matched_iou(list(pred), list(true))[0]


def row_area_ratio(pred: Boxes, true: Boxes) -> float | None:
    """Predicted / true area of one sample's one-to-one IoU-matched boxes; None without a matched pair."""
    return matched_area_ratio(pred, true, match_boxes(pred, true))


def grounding_metrics(pred: list[Box], true: list[Box], no_finding: bool, credit_no_finding: bool = False) -> dict:
    """Per-sample grounding figures: iou and region_iou (None when the truth has no box), acc@0.5, ap@0.5,
    area_ratio (predicted / true area of the matched boxes; None without a matched box)."""
    from medrl.rewards.region_iou import region_iou

    if true:
        value, region = mean_matched_iou(pred, true), region_iou(pred, true)
        acc = 1.0 if value >= 0.5 else 0.0
    else:
        value = region = None  # IoU of a no-finding sample is undefined; it counts in acc and mAP only
        acc = 1.0 if (not pred and no_finding) else 0.0
    return {"iou": value, "region_iou": region, "acc@0.5": acc,
            "ap@0.5": sample_ap(pred, true, no_finding, credit_no_finding), "area_ratio": row_area_ratio(pred, true)}


# Median box/true area outside this band: boxes have grown (or shrunk) enough to say so (issue 23).
AREA_RATIO_BAND = (0.67, 1.5)


def median_area_ratio(records: Sequence[dict]) -> float:
    """Median over scored grounding records (`pred_boxes`, `true_boxes`) of each row's matched box/true area; NaN if none.

    IoU pays for a larger box when the model is unsure (it overlaps more often), so a gain in mIoU
    can come with boxes that grow and fewer rows over IoU 0.5; this figure shows which.
    """
    ratios = [r for r in (row_area_ratio(rec.get("pred_boxes") or [], rec.get("true_boxes") or [])
                          for rec in records) if r is not None]
    return statistics.median(ratios) if ratios else math.nan


def area_ratio_note(ratio: float, band: tuple[float, float] = AREA_RATIO_BAND) -> str:
    """One plain sentence on a median box/true area ratio, a warning when it leaves `band`."""
    if ratio is None or math.isnan(ratio):
        return "Box size: no predicted box overlaps a true box, so there is no box/true area ratio."
    lo, hi = band
    if ratio > hi:
        return (f"WARNING: the model's boxes are {ratio:.2f} times the true area (median over matched boxes), "
                f"above {hi:g}: boxes have grown. IoU rewards pay for bigger boxes when the model is unsure, "
                f"so a rise in IoU here may not be better localisation; check acc@0.5.")
    if ratio < lo:
        return (f"WARNING: the model's boxes are {ratio:.2f} times the true area (median over matched boxes), "
                f"below {lo:g}: boxes are too small.")
    return f"Box size: the model's boxes are {ratio:.2f} times the true area (median over matched boxes), within [{lo:g}, {hi:g}]."


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (O(len(a) * len(b)), O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F1 of token sequences: LCS-based precision and recall, harmonic mean."""
    lcs = lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


def bleu_scores(hyp: Sequence[str], ref: Sequence[str]) -> dict:
    """Sentence BLEU-1..4 (nltk, uniform weights up to n, smoothing method 1)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method1
    out = {}
    for n in range(1, 5):
        if not hyp or not ref:
            out[f"bleu{n}"] = 0.0
            continue
        out[f"bleu{n}"] = float(sentence_bleu([list(ref)], list(hyp), weights=tuple([1.0 / n] * n),
                                              smoothing_function=smooth))
    return out


def report_metrics(answer: str, reference: str) -> dict:
    """BLEU-1..4 and ROUGE-L of an answer against a reference report (tokens as the BLEU reward makes them)."""
    from medrl.rewards.bleu import normalize_text

    hyp, ref = normalize_text(answer), normalize_text(reference)
    return {**bleu_scores(hyp, ref), "rouge_l": rouge_l(hyp, ref)}


def summary_stats(values: Sequence[float | None]) -> dict:
    """n, mean, std (population), median, min, max of the finite values (None when there are none)."""
    vals = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / n)
    mid = n // 2
    median = vals[mid] if n % 2 else (vals[mid - 1] + vals[mid]) / 2
    return {"n": n, "mean": mean, "std": std, "median": median, "min": vals[0], "max": vals[-1]}

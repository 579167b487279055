"""Size-calibration reward for grounding: a matched box of the true size scores 1, one `max_ratio` times too big or small 0.

    per matched pair:  c = max(0, 1 - |ln(area_pred / area_true)| / ln(max_ratio))     (max_ratio default 4)
    score = sum of c over IoU-matched pairs / max(#true, #predicted)

So a box of twice (or half) the true area scores 0.5 and one of four times (or a quarter) 0,
whatever its overlap. Alone it does not locate anything (a box of the right size anywhere that
overlaps scores 1); it is a term to add to a locating reward (IoU, GIoU, F1) in a spec, to take
back what those pay for growing boxes. Missed true boxes and extra boxes count 0 through the
divisor, as in the IoU reward. Which boxes are paired (`pairing`):

  iou       the IoU reward's pairs (one to one, IoU > 0): a box that misses its finding has no
            pair and scores 0, so growing it until it overlaps earns size credit (measured: it
            did not stop growth);
  distance  the IoU pairs, then the boxes left on both sides paired one to one by DIoU (nearest
            centres, relative to the enclosing box), overlap or not: every box is judged on its
            size from the start, so growth into overlap earns nothing.

Empty truth (no finding): the IoU reward's rule (`no_finding_score` for a stated no finding
without a box, else 0). A truth that does not read scores 0. Range [0, 1].

Keys: `score`, `size` (the same value), `log_area_ratio` (ln of the area ratio of the pairs this
term judged; 0 without a pair), counts, and the box-growth monitor (`area_ratio`, `hit50`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from medrl.boxes import Box, box_area, diou, match_boxes, matched_area_ratio
from medrl.rewards import box_growth
from medrl.rewards.iou import NO_FINDING_SCORE, GroundingParse, no_finding_credit, pairs_value, read_answer

KEYS = ("score", "size", "log_area_ratio", "n_pred", "n_true", "n_matched", "parsed", "no_finding", *box_growth.KEYS)
MAX_RATIO = 4.0
PAIRINGS = ("iou", "distance")


def _nearness(a: Sequence[float], b: Sequence[float]) -> float:
    """(DIoU + 1) / 2: above 0 for any two boxes, so every box finds a partner."""
    return (diou(a, b) + 1.0) / 2.0


def calibration(pred_area: float, true_area: float, max_ratio: float = MAX_RATIO) -> float:
    """1 - |ln(pred_area / true_area)| / ln(max_ratio), clipped to [0, 1]; 0 for a box without area."""
    if pred_area <= 0 or true_area <= 0 or not math.isfinite(pred_area) or not math.isfinite(true_area):
        return 0.0
    return max(0.0, min(1.0, 1.0 - abs(math.log(pred_area / true_area)) / math.log(max_ratio)))


def _with_distance_pairs(pred: Sequence[Box], true: Sequence[Box],
                         pairs: Sequence[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """The IoU pairs plus the leftover boxes paired by DIoU (only leftovers: the common case costs nothing)."""
    used_p, used_t = {p for p, _, _ in pairs}, {t for _, t, _ in pairs}
    left_p = [i for i in range(len(pred)) if i not in used_p]
    left_t = [j for j in range(len(true)) if j not in used_t]
    if not left_p or not left_t:
        return list(pairs)
    extra = match_boxes([pred[i] for i in left_p], [true[j] for j in left_t], _nearness)
    return [*pairs, *((left_p[a], left_t[b], v) for a, b, v in extra)]


def size_score(pred: Sequence[Box], true: Sequence[Box], pairs: Sequence[tuple[int, int, float]], n_pred: int,
               max_ratio: float = MAX_RATIO) -> float:
    """Sum of per-pair calibration over max(#true, n_pred); 0 when either side is empty."""
    values = [(i, j, calibration(box_area(pred[i]), box_area(true[j]), max_ratio)) for i, j, _ in pairs]
    return pairs_value(values, n_pred, len(true))


def score_details(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", no_finding_score: float = NO_FINDING_SCORE, max_ratio: float = MAX_RATIO,
                  pairing: str = "iou", **kwargs: Any) -> tuple[dict, GroundingParse]:
    """The size-calibration reward (keys `KEYS`) and what it read."""
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not max_ratio > 1 \
            or not math.isfinite(max_ratio):
        raise ValueError(f"size reward: max_ratio must be a finite number > 1, got {max_ratio!r}")
    if pairing not in PAIRINGS:
        raise ValueError(f"size reward: unknown pairing {pairing!r}; expected one of {list(PAIRINGS)}")
    parse, n_pred = read_answer(solution_str, ground_truth, extra_info, box_convention, kwargs, "size")
    pairs = parse.pairs if pairing == "iou" else _with_distance_pairs(parse.pred, parse.true, parse.pairs)
    value = size_score(parse.pred, parse.true, pairs, n_pred, max_ratio)
    growth = box_growth.monitor(parse.pred, parse.true, parse.pairs, parse.no_finding)
    score = value if parse.true else no_finding_credit(parse.no_finding, no_finding_score)
    ratio = matched_area_ratio(parse.pred, parse.true, pairs)  # of the pairs this term judged
    result = {"score": score, "size": value, "log_area_ratio": math.log(ratio) if ratio else 0.0,
              "n_pred": float(n_pred), "n_true": float(len(parse.true)), "n_matched": float(len(parse.pairs)),
              "parsed": 1.0 if (n_pred or parse.no_finding) else 0.0, "no_finding": 1.0 if parse.no_finding else 0.0,
              **growth}
    return result, parse


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", no_finding_score: float = NO_FINDING_SCORE, max_ratio: float = MAX_RATIO,
                  pairing: str = "iou", **kwargs: Any) -> dict:
    """Size-calibration grounding reward in [0, 1] with keys `KEYS` (see the module rule)."""
    return score_details(data_source, solution_str, ground_truth, extra_info, box_convention, no_finding_score,
                         max_ratio, pairing, **kwargs)[0]

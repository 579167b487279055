"""F1-at-IoU reward for grounding: boxes matched one to one (Hungarian, on IoU), then F1 of the matches.

    threshold mode (default):  F1_t = 2 * #(matches with IoU >= t) / (#true + #predicted),
                               score = mean of F1_t over `thresholds` (default [0.5])
    soft mode (RadVLM-GRPO):   score = 2 * (sum of matched IoUs) / (#true + #predicted)
                               (the harmonic mean of soft precision sum/#pred and soft recall sum/#true)

A box counts only when it is good enough to count at IoU t, so a larger box that
merely overlaps more often earns nothing until it reaches t: a box twice the true area
around the finding has IoU 0.5 at best, and one larger than that never hits 0.5.
Several thresholds (e.g. [0.5, 0.75]) reward tighter boxes more. Soft mode equals the IoU reward
for one box against one truth; it differs when the counts differ. Missed true boxes and extra
boxes both cost (a drawn box that cannot be placed counts as predicted). Empty truth (no
finding): the IoU reward's rule (`no_finding_score` for a stated no finding without a box, else 0).
A truth that does not read scores 0. Range [0, 1].

Keys: `score`, `f1` (the same value), `precision` and `recall` (mean over thresholds, or soft),
counts, and the box-growth monitor (`area_ratio`, `hit50`: `medrl.rewards.box_growth`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from medrl.rewards import box_growth
from medrl.rewards.iou import NO_FINDING_SCORE, GroundingParse, no_finding_credit, read_answer

KEYS = ("score", "f1", "precision", "recall", "n_pred", "n_true", "n_matched", "parsed", "no_finding",
        *box_growth.KEYS)
MODES = ("threshold", "soft")
THRESHOLDS = (0.5,)


def check_thresholds(thresholds: Any) -> tuple[float, ...]:
    """The IoU thresholds as a tuple of numbers in (0, 1]; raises ValueError naming the bad value."""
    values = (thresholds,) if isinstance(thresholds, (int, float)) else tuple(thresholds or ())
    if not values or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 1 for t in values):
        raise ValueError(f"f1iou reward: thresholds must be numbers in (0, 1], got {thresholds!r}")
    return tuple(float(t) for t in values)


def f1_at_iou(ious: Sequence[float], n_pred: int, n_true: int, mode: str = "threshold",
              thresholds: Sequence[float] = THRESHOLDS) -> tuple[float, float, float]:
    """(F1, precision, recall) of matched-pair IoUs `ious` for n_pred predicted and n_true true boxes."""
    if n_pred <= 0 or n_true <= 0:
        return 0.0, 0.0, 0.0
    if mode == "soft":
        hits = [float(sum(ious))]
    else:
        hits = [float(sum(v >= t for v in ious)) for t in thresholds]
    f1 = sum(2 * h / (n_pred + n_true) for h in hits) / len(hits)
    p = sum(h / n_pred for h in hits) / len(hits)
    r = sum(h / n_true for h in hits) / len(hits)
    if not all(math.isfinite(v) for v in (f1, p, r)):
        return 0.0, 0.0, 0.0
    return min(1.0, max(0.0, f1)), min(1.0, max(0.0, p)), min(1.0, max(0.0, r))


def score_details(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", no_finding_score: float = NO_FINDING_SCORE, mode: str = "threshold",
                  thresholds: Any = THRESHOLDS, **kwargs: Any) -> tuple[dict, GroundingParse]:
    """The F1-at-IoU reward (keys `KEYS`) and what it read."""
    if mode not in MODES:
        raise ValueError(f"f1iou reward: unknown mode {mode!r}; expected one of {MODES}")
    ts = check_thresholds(thresholds)
    parse, n_pred = read_answer(solution_str, ground_truth, extra_info, box_convention, kwargs, "f1iou")
    f1, p, r = f1_at_iou([v for _, _, v in parse.pairs], n_pred, len(parse.true), mode, ts)
    score = f1 if parse.true else no_finding_credit(parse.no_finding, no_finding_score)
    result = {"score": score, "f1": f1, "precision": p, "recall": r, "n_pred": float(n_pred),
              "n_true": float(len(parse.true)), "n_matched": float(len(parse.pairs)),
              "parsed": 1.0 if (n_pred or parse.no_finding) else 0.0, "no_finding": 1.0 if parse.no_finding else 0.0,
              **box_growth.monitor(parse.pred, parse.true, parse.pairs, parse.no_finding)}
    return result, parse


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", no_finding_score: float = NO_FINDING_SCORE, mode: str = "threshold",
                  thresholds: Any = THRESHOLDS, **kwargs: Any) -> dict:
    """F1-at-IoU grounding reward in [0, 1] with keys `KEYS` (see the module rule)."""
    return score_details(data_source, solution_str, ground_truth, extra_info, box_convention, no_finding_score, mode,
                         thresholds, **kwargs)[0]

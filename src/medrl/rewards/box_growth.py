"""The box-growth monitor: two keys every grounding reward returns, so verl logs them beside the score.

- `area_ratio`: predicted / true area over the row's IoU-matched boxes (`medrl.boxes.matched_area_ratio`).
  1 is the true size. IoU pays for a bigger box when the model is unsure where the finding is, so a
  rising reward can hide boxes that grow; this key shows it.
- `hit50`: the share of the row's true boxes whose matched box reaches IoU 0.5.

verl wants the same keys with a number on every row (and averages them per data source in
validation, where one NaN would make the whole figure NaN), so rows where a key has nothing to
measure still get a finite value:
- no matched box (no box drawn, boxes that miss, a no-finding truth, a truth that does not read):
  `area_ratio` 1.0, the neutral value. A mean over rows then lies between 1 and the mean over matched
  rows, so it can understate growth but never shows growth that is not there. The exact median over
  matched boxes is what `medrl eval` and the run summary report (`medrl.evaluation.metrics`).
- no-finding truth: `hit50` is 1.0 for a correct no-finding answer (no box, states no finding) and
  0.0 otherwise, the rule of acc@0.5 in `medrl eval`; a truth that does not read: 0.0.

Matching is always one-to-one by IoU (`medrl.boxes.match_boxes`), whatever the reward pays for, so
the keys mean the same under every grounding reward.
"""

from __future__ import annotations

import math
from typing import Sequence

from medrl.boxes import matched_area_ratio

KEYS = ("area_ratio", "hit50")
HIT_IOU = 0.5
NEUTRAL_RATIO = 1.0


def monitor(pred: Sequence[Sequence[float]], true: Sequence[Sequence[float]],
            pairs: Sequence[tuple[int, int, float]], no_finding: bool) -> dict[str, float]:
    """{"area_ratio", "hit50"} of one row from its boxes and IoU-matched pairs (see the module rule)."""
    if not pairs:
        return {"area_ratio": NEUTRAL_RATIO, "hit50": 1.0 if (no_finding and not pred and not true) else 0.0}
    ratio = matched_area_ratio(pred, true, pairs)
    hits = 0
    for _, _, v in pairs:
        if v >= HIT_IOU:
            hits += 1
    if ratio is None or not math.isfinite(ratio):
        ratio = NEUTRAL_RATIO
    return {"area_ratio": float(ratio), "hit50": hits / len(true)}


NO_MATCH = {"area_ratio": NEUTRAL_RATIO, "hit50": 0.0}  # what a row whose truth does not read returns

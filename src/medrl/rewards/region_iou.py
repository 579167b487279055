"""Region-level IoU: the union of the predicted boxes against the union of the true boxes.

    region IoU = area(P ∩ T) / area(P ∪ T),   P = union of predicted boxes, T = union of true boxes

One box drawn around two adjacent lesions, or one lesion drawn as two boxes, covers
the same region as the truth and scores as such, where one-to-one matching
(`medrl.rewards.iou`) would count a miss or a false box. Overlapping boxes on one
side count their shared area once. 0 when either side has no area. Range [0, 1].

The areas are exact (a sweep over the x coordinates of the box edges, merging the
y intervals in each strip), not rasterised. shapely's polygon union gives the same
figures (the tests compare them) but costs about 0.35 ms a rollout for five boxes a
side, seven times the reward's budget.
"""

from __future__ import annotations

import math
from typing import Sequence

from medrl.boxes import iou

Boxes = Sequence[Sequence[float]]

def region_areas(pred: Boxes, true: Boxes) -> tuple[float, float]:
    """(area of P ∩ T, area of P ∪ T) for the unions P and T of two lists of (x1, y1, x2, y2) boxes."""
    # Each box: its x extent and its two y events (y, change of predicted cover, change of true cover).
    boxes = [(b[0], b[2], ((b[1], 1, 0), (b[3], -1, 0))) for b in pred if b[2] > b[0] and b[3] > b[1]]
    boxes += [(b[0], b[2], ((b[1], 0, 1), (b[3], 0, -1))) for b in true if b[2] > b[0] and b[3] > b[1]]
    xs = sorted({b[0] for b in boxes} | {b[1] for b in boxes})
    inter = union = 0.0
    for x0, x1 in zip(xs, xs[1:]):  # a strip between two neighbouring box edges
        events = []
        for bx0, bx1, ev in boxes:
            if bx0 <= x0 and bx1 >= x1:
                events += ev
        if not events:
            continue
        events.sort()  # events at the same y add no length, so their order does not matter
        both = either = last = 0.0
        in_p = in_t = 0
        for y, dp, dt in events:
            if in_p or in_t:
                either += y - last
                if in_p and in_t:
                    both += y - last
            last = y
            in_p += dp
            in_t += dt
        inter += (x1 - x0) * both
        union += (x1 - x0) * either
    return inter, union


def region_iou(pred: Boxes, true: Boxes) -> float:
    """IoU of the union of `pred` with the union of `true` in [0, 1]; 0 when either side has no area."""
    if not pred or not true:
        return 0.0
    if len(pred) == 1 and len(true) == 1:  # the usual rollout: plain box IoU, no sweep
        return iou(pred[0], true[0])
    inter, union = region_areas(pred, true)
    if union <= 0 or not math.isfinite(inter) or not math.isfinite(union):
        return 0.0
    return min(1.0, max(0.0, inter / union))


def region_overlaps(pred: Boxes, true: Boxes) -> int:
    """How many true boxes share area with at least one predicted box."""
    pred = [p for p in pred if p[2] > p[0] and p[3] > p[1]]
    n = 0
    for t in true:
        if t[2] <= t[0] or t[3] <= t[1]:
            continue
        for p in pred:
            if p[0] < t[2] and t[0] < p[2] and p[1] < t[3] and t[1] < p[3]:
                n += 1
                break
    return n

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

# Sweep events at one y: ends sort before starts, so touching strips add no overlap.
_P_END, _T_END, _P_START, _T_START = 0, 1, 2, 3


def _strip_lengths(events: list[tuple[float, int]]) -> tuple[float, float]:
    """(length covered by both sides, length covered by either side) of one strip's sorted y events."""
    both = either = 0.0
    in_p = in_t = 0
    last = events[0][0]
    for y, kind in events:
        if in_p or in_t:
            d = y - last
            either += d
            if in_p and in_t:
                both += d
        last = y
        if kind == _P_START:
            in_p += 1
        elif kind == _P_END:
            in_p -= 1
        elif kind == _T_START:
            in_t += 1
        else:
            in_t -= 1
    return both, either


def region_areas(pred: Boxes, true: Boxes) -> tuple[float, float]:
    """(area of P ∩ T, area of P ∪ T) for the unions P and T of two lists of (x1, y1, x2, y2) boxes."""
    boxes = [(b[0], b[1], b[2], b[3], _P_START, _P_END) for b in pred if b[2] > b[0] and b[3] > b[1]]
    boxes += [(b[0], b[1], b[2], b[3], _T_START, _T_END) for b in true if b[2] > b[0] and b[3] > b[1]]
    xs = sorted({b[0] for b in boxes} | {b[2] for b in boxes})
    inter = union = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        events = []
        for bx0, by0, bx1, by1, start, end in boxes:
            if bx0 <= x0 and bx1 >= x1:
                events.append((by0, start))
                events.append((by1, end))
        if events:
            events.sort()
            both, either = _strip_lengths(events)
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
    return sum(1 for t in true if any(min(p[2], t[2]) > max(p[0], t[0]) and min(p[3], t[3]) > max(p[1], t[1])
                                      for p in pred))

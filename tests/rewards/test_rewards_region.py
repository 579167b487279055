"""Region-level IoU (union of predicted boxes vs union of true boxes): hand-computed cases, the reward mode, eval.

Coordinates in the hand-computed cases are small integers or binary fractions, so every
expected value is exact in floating point.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from medrl.evaluation.metrics import grounding_metrics
from medrl.rewards import compose, iou
from medrl.rewards.region_iou import region_areas, region_iou, region_overlaps


@pytest.mark.parametrize("pred, true, inter, union", [
    # overlapping: two 2x2 squares sharing a 1x1 corner
    ([(0, 0, 2, 2)], [(1, 1, 3, 3)], 1, 7),
    # overlapping boxes on the predicted side: their shared 1x1 counts once
    # (P = 7; P ∩ T = 2 + 2 - 1 = 3; P ∪ T = 7 + 4 - 3 = 8)
    ([(0, 0, 2, 2), (1, 1, 3, 3)], [(1, 0, 3, 2)], 3, 8),
    # disjoint
    ([(0, 0, 1, 1)], [(2, 2, 3, 3)], 0, 2),
    ([(0, 0, 1, 1), (5, 5, 6, 6)], [(2, 2, 3, 3), (7, 7, 8, 8)], 0, 4),
    # nested: a 1x1 truth inside a 4x4 prediction
    ([(0, 0, 4, 4)], [(1, 1, 2, 2)], 1, 16),
    # nested on the predicted side: the inner box adds no area
    ([(0, 0, 4, 4), (1, 1, 2, 2)], [(1, 1, 3, 3)], 4, 16),
    # touching along an edge and at a corner: no shared area
    ([(0, 0, 1, 1)], [(1, 0, 2, 1)], 0, 2),
    ([(0, 0, 1, 1)], [(1, 1, 2, 2)], 0, 2),
    # one lesion drawn as two boxes that touch: the same region as the truth
    ([(0, 0, 1, 1), (1, 0, 2, 1)], [(0, 0, 2, 1)], 2, 2),
    # an L-shaped truth (two touching boxes) against a box over its corner
    ([(0, 0, 2, 2)], [(0, 0, 4, 1), (0, 1, 1, 4)], 3, 8),
])
def test_hand_computed_areas_and_iou(pred, true, inter, union):
    assert region_areas(pred, true) == (inter, union)
    assert region_iou(pred, true) == inter / union
    assert region_iou(true, pred) == inter / union  # symmetric


@pytest.mark.parametrize("pred, true, region, matched", [
    # one box over two adjacent lesions: right region, but one-to-one matching counts a miss
    ([(0.125, 0.25, 0.75, 0.5)], [(0.125, 0.25, 0.375, 0.5), (0.375, 0.25, 0.75, 0.5)], 1.0, 0.6 / 2),
    # one lesion split into two halves: right region, matching counts a false box
    ([(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5)], [(0, 0, 1, 0.5)], 1.0, 0.25),
    # the same box twice: region 1, matching punishes the duplicate
    ([(0.25, 0.25, 0.5, 0.5)] * 2, [(0.25, 0.25, 0.5, 0.5)], 1.0, 0.5),
    # a missed lesion costs its area in region mode (area 1/16 of 1/8 in all), a whole box in matching
    ([(0, 0, 0.25, 0.25)], [(0, 0, 0.25, 0.25), (0.5, 0.5, 0.75, 0.75)], 0.5, 0.5),
])
def test_region_against_matching(pred, true, region, matched):
    assert region_iou(pred, true) == region
    assert iou.matched_iou(pred, true)[0] == pytest.approx(matched)


def test_empty_and_degenerate_sides():
    assert region_iou([], [(0, 0, 1, 1)]) == 0.0
    assert region_iou([(0, 0, 1, 1)], []) == 0.0
    assert region_iou([(0.5, 0, 0.5, 1)], [(0, 0, 1, 1)]) == 0.0  # a line has no area
    assert region_iou([(0, 0, 1, 1), (0.5, 0, 0.5, 1)], [(0, 0, 1, 1)]) == 1.0  # ... and adds none
    assert region_iou([(0, 0, 1e308, 1e308), (0, 0, 1, 1)], [(0, 0, 1e308, 1e308)]) == 0.0  # overflow is 0, not NaN


def test_overlaps_counts_true_boxes_touched_by_area():
    true = [(0, 0, 1, 1), (2, 0, 3, 1), (4, 0, 5, 1)]
    assert region_overlaps([(0.5, 0, 2.5, 1)], true) == 2
    assert region_overlaps([(1, 0, 2, 1)], true) == 0  # touching edges only
    assert region_overlaps([(0, 0, 5, 1)], [(1, 0, 1, 1), (2, 0.5, 3, 0.5)]) == 0  # lines have no area
    assert region_overlaps([(0.5, 0, 0.5, 1)], true) == 0


BOX = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(1, 8), st.integers(1, 8)).map(
    lambda t: (t[0] / 8, t[1] / 8, (t[0] + t[2]) / 8, (t[1] + t[3]) / 8))


@settings(max_examples=300, deadline=None)
@given(pred=st.lists(BOX, min_size=1, max_size=5), true=st.lists(BOX, min_size=1, max_size=5))
def test_matches_shapely_polygon_union(pred, true):
    import shapely  # the test extra installs it
    p = shapely.union_all([shapely.box(*b) for b in pred])
    t = shapely.union_all([shapely.box(*b) for b in true])
    assert region_iou(pred, true) == pytest.approx(p.intersection(t).area / p.union(t).area, abs=1e-12)
    assert region_iou(pred[::-1] + pred[:1], true) == pytest.approx(region_iou(pred, true), abs=1e-12)


def _grounding(answer: str, truth: str, **kw) -> dict:
    return iou.compute_score("medrl/grounding", f"<think>x</think><answer>{answer}</answer>", truth, {}, **kw)


def test_reward_region_mode():
    two = "[[0.125, 0.25, 0.375, 0.5], [0.375, 0.25, 0.75, 0.5]]"
    res = _grounding("Opacity at [0.125, 0.25, 0.75, 0.5].", two, iou_mode="region")
    # The growth monitor matches one to one whatever the mode: the box (area 0.15625) pairs with the
    # larger true box (area 0.09375, IoU 0.6), so area ratio 5/3 and one of two true boxes hit at 0.5.
    assert res == {"score": 1.0, "iou": 1.0, "n_pred": 1.0, "n_true": 2.0, "n_matched": 2.0, "parsed": 1.0,
                   "no_finding": 0.0, "area_ratio": pytest.approx(5 / 3), "hit50": 0.5}
    assert _grounding("Opacity at [0.125, 0.25, 0.75, 0.5].", two)["score"] == pytest.approx(0.6 / 2)
    # No finding is scored as in match mode.
    assert _grounding("No abnormalities are detected.", "[]", iou_mode="region")["score"] == 0.8
    assert _grounding("[0.1, 0.1, 0.2, 0.2]", "[]", iou_mode="region")["score"] == 0.0


def test_reward_region_mode_counts_unplaceable_boxes():
    # The second box is above 1000 with no image size: drawn, not placeable, so it halves the score.
    res = _grounding("[0.25, 0.25, 0.5, 0.5] and [2000, 2000, 3000, 3000]", "[[0.25, 0.25, 0.5, 0.5]]",
                     iou_mode="region")
    assert (res["score"], res["n_pred"]) == (0.5, 2.0)


def test_reward_rejects_unknown_mode():
    with pytest.raises(ValueError, match="iou_mode"):
        _grounding("[0.1, 0.1, 0.2, 0.2]", "[[0.1, 0.1, 0.2, 0.2]]", iou_mode="union")


def test_region_mode_from_a_spec():
    spec = {"routes": {"medrl/grounding": {"iou": 1.0}}, "kwargs": {"iou": {"iou_mode": "region"}}}
    res = compose.compute_score("medrl/grounding", "<answer>[0, 0, 0.5, 0.5] [0.5, 0, 1, 0.5]</answer>",
                                "[[0, 0, 1, 0.5]]", {}, spec=spec)
    assert res["score"] == 1.0 and res["iou/n_matched"] == 1.0


def test_eval_reports_both_modes():
    m = grounding_metrics([(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5)], [(0, 0, 1, 0.5)], no_finding=False)
    assert (m["iou"], m["region_iou"]) == (0.25, 1.0)
    m = grounding_metrics([], [], no_finding=True)
    assert m["iou"] is None and m["region_iou"] is None

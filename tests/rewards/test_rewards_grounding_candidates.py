"""Grounding rewards that growing boxes cannot win (giou, f1iou, size) and the box-growth monitor: hand-computed tables.

Boxes use binary fractions so every area, IoU and ratio below is exact. T = [0.25, 0.25, 0.5, 0.5]
has area 1/16; A = [0, 0, 0.25, 0.25] and B = [0.5, 0.5, 0.75, 0.75] are two findings of area 1/16.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from medrl.boxes import diou, giou as giou_of, match_boxes, matched_area_ratio
from medrl.rewards import box_growth, compose, f1iou, giou, iou, size
from medrl.rewards.contract import run_check

T = "[[0.25, 0.25, 0.5, 0.5]]"
AB = "[[0, 0, 0.25, 0.25], [0.5, 0.5, 0.75, 0.75]]"
SAME = "[0.25, 0.25, 0.5, 0.5]"
TWICE = "[0.25, 0.25, 0.5, 0.75]"  # around T, twice its area: IoU 1/2
FOUR = "[0.25, 0.25, 0.75, 0.75]"  # around T, four times its area: IoU 1/4
HALF = "[0.25, 0.25, 0.5, 0.375]"  # inside T, half its area: IoU 1/2
TOUCH = "[0.5, 0.25, 0.75, 0.5]"  # beside T, sharing an edge: IoU 0
FAR = "[0.75, 0.75, 1.0, 1.0]"  # far from T: IoU 0
HALF_FAR = "[0.75, 0.75, 1.0, 0.875]"  # far from T, half its area
# A exactly, a box twice B's area around B (IoU 1/2), and a false box.
A_B2_E = "[0, 0, 0.25, 0.25] [0.5, 0.5, 0.75, 1.0] [0.75, 0, 1.0, 0.25]"
A_B2 = "[0, 0, 0.25, 0.25] [0.5, 0.5, 0.75, 1.0]"
NO_FINDING = "No abnormalities or lesions are detected."
REPO = Path(__file__).resolve().parents[2]


def run(module, answer: str, truth: str, **kw) -> dict:
    return module.compute_score("medrl/grounding", f"<think>x</think><answer>{answer}</answer>", truth, {}, **kw)


@pytest.mark.parametrize("answer, truth, kw, score, area_ratio, hit50", [
    (SAME, T, {}, 1.0, 1.0, 1.0),
    (FOUR, T, {}, 5 / 8, 4.0, 0.0),             # GIoU = IoU = 1/4 (the hull is the box): (1/4 + 1) / 2
    (TOUCH, T, {}, 1 / 2, 1.0, 0.0),            # IoU 0 but the hull is the union: GIoU 0, where IoU gives 0
    (FAR, T, {}, 1 / 9, 1.0, 0.0),              # union 1/8, hull 9/16: GIoU -7/9
    (FAR, T, {"kind": "diou"}, 5 / 18, 1.0, 0.0),   # centre distance^2 1/2, hull diagonal^2 9/8: DIoU -4/9
    (FOUR, T, {"kind": "diou"}, 19 / 32, 4.0, 0.0),  # 1/4 - (1/32) / (1/2) = 3/16
    ("[0, 0, 0.25, 0.25]", AB, {}, 1 / 2, 1.0, 0.5),  # one of two findings: 1 / max(1, 2)
    # A exact (1) + the false box [0, .75, .25, 1] paired with B (union 1/8, hull 3/8: GIoU -2/3 -> 1/6), over 2
    ("[0, 0, 0.25, 0.25] [0, 0.75, 0.25, 1.0]", AB, {}, 7 / 12, 1.0, 0.5),
    ("Nothing definite.", T, {}, 0.0, 1.0, 0.0),
    (NO_FINDING, "[]", {}, 0.8, 1.0, 1.0),
    (NO_FINDING, "[]", {"no_finding_score": 1.0}, 1.0, 1.0, 1.0),
    (SAME, "[]", {}, 0.0, 1.0, 0.0),
    (SAME, "[[0.5, 0.5, 0.2, 0.2]]", {}, 0.0, 1.0, 0.0),  # a truth that does not read
])
def test_giou_table(answer, truth, kw, score, area_ratio, hit50):
    res = run(giou, answer, truth, **kw)
    assert tuple(res) == giou.KEYS
    assert res["score"] == pytest.approx(score, abs=1e-12) and res["giou"] == pytest.approx(
        score if truth not in ("[]",) else 0.0, abs=1e-12)
    assert (res["area_ratio"], res["hit50"]) == (pytest.approx(area_ratio), hit50)


@pytest.mark.parametrize("answer, truth, kw, score, precision, recall", [
    (SAME, T, {}, 1.0, 1.0, 1.0),
    (TWICE, T, {}, 1.0, 1.0, 1.0),      # IoU exactly 1/2 counts at 0.5
    (FOUR, T, {}, 0.0, 0.0, 0.0),       # IoU 1/4: a grown box earns nothing
    (FOUR, T, {"mode": "soft"}, 0.25, 0.25, 0.25),  # soft F1 = IoU for one box against one truth
    (A_B2_E, AB, {}, 4 / 5, 2 / 3, 1.0),  # 2 hits of 3 drawn, 2 true: 2*2 / (3 + 2)
    (A_B2_E, AB, {"thresholds": [0.5, 0.75]}, 3 / 5, 1 / 2, 3 / 4),  # at 0.75 only A counts: (4/5 + 2/5) / 2
    (A_B2, AB, {"mode": "soft"}, 3 / 4, 3 / 4, 3 / 4),   # 2 * (1 + 1/2) / (2 + 2)
    (A_B2, AB, {}, 1.0, 1.0, 1.0),
    ("[0, 0, 0.25, 0.25]", AB, {}, 2 / 3, 1.0, 1 / 2),
    ("Nothing definite.", T, {}, 0.0, 0.0, 0.0),
    (NO_FINDING, "[]", {}, 0.8, 0.0, 0.0),
    (SAME, "[]", {}, 0.0, 0.0, 0.0),
])
def test_f1iou_table(answer, truth, kw, score, precision, recall):
    res = run(f1iou, answer, truth, **kw)
    assert tuple(res) == f1iou.KEYS
    assert res["score"] == pytest.approx(score, abs=1e-12)
    assert (res["precision"], res["recall"]) == (pytest.approx(precision, abs=1e-12), pytest.approx(recall, abs=1e-12))


def test_f1iou_monitor_on_several_boxes():
    res = run(f1iou, A_B2_E, AB)
    # matched areas: A 1/16 with A 1/16, B2 1/8 with B 1/16 -> (3/16) / (2/16); both true boxes hit at 0.5
    assert (res["area_ratio"], res["hit50"], res["n_pred"], res["n_matched"]) == (1.5, 1.0, 3.0, 2.0)


@pytest.mark.parametrize("answer, truth, kw, score, log_ratio", [
    (SAME, T, {}, 1.0, 0.0),
    (TWICE, T, {}, 0.5, math.log(2)),      # 1 - ln 2 / ln 4
    (HALF, T, {}, 0.5, -math.log(2)),
    (FOUR, T, {}, 0.0, math.log(4)),
    (FOUR, T, {"max_ratio": 16}, 0.5, math.log(4)),  # 1 - ln 4 / ln 16
    (A_B2_E, AB, {}, 0.5, math.log(1.5)),  # (1 + 1/2) / max(3, 2)
    (FAR, T, {}, 0.0, 0.0),                # no overlap, no pair: nothing to calibrate
    (NO_FINDING, "[]", {}, 0.8, 0.0),
    (FAR, "[]", {}, 0.0, 0.0),
    # pairing by distance: every box is judged on its size, overlap or not
    (FAR, T, {"pairing": "distance"}, 1.0, 0.0),       # the right size, in the wrong place
    (HALF_FAR, T, {"pairing": "distance"}, 0.5, -math.log(2)),
    (HALF_FAR, T, {}, 0.0, 0.0),                        # IoU pairing: no overlap, no pair
    (FOUR, T, {"pairing": "distance"}, 0.0, math.log(4)),
    (A_B2_E, AB, {"pairing": "distance"}, 0.5, math.log(1.5)),  # every true box overlapped: the IoU pairs
    (A_B2 + " " + HALF_FAR, AB, {"pairing": "distance"}, 0.5, math.log(1.5)),  # no true box left for HALF_FAR
    (HALF_FAR + " " + SAME, AB, {"pairing": "distance"}, 0.75, math.log(0.75)),  # no overlap: (1/2 + 1) / 2
    (FAR + " " + SAME, T, {"pairing": "distance"}, 0.5, 0.0),   # one pair, divisor max(1, 2)
    (NO_FINDING, "[]", {"pairing": "distance"}, 0.8, 0.0),
])
def test_size_table(answer, truth, kw, score, log_ratio):
    res = run(size, answer, truth, **kw)
    assert tuple(res) == size.KEYS
    assert res["score"] == pytest.approx(score, abs=1e-12)
    assert res["log_area_ratio"] == pytest.approx(log_ratio, abs=1e-12)


@pytest.mark.parametrize("module, kw, message", [
    (giou, {"kind": "ciou"}, "unknown kind"), (f1iou, {"mode": "hard"}, "unknown mode"),
    (f1iou, {"thresholds": [0.5, 1.5]}, "thresholds must be"), (f1iou, {"thresholds": []}, "thresholds must be"),
    (size, {"max_ratio": 1.0}, "max_ratio must be"), (size, {"pairing": "centre"}, "unknown pairing"), (giou, {"box_convention": "pixels"}, "unknown box convention"),
])
def test_bad_settings_name_the_setting(module, kw, message):
    with pytest.raises(ValueError, match=message):
        run(module, SAME, T, **kw)


def test_growing_a_box_around_the_finding_pays_under_iou_but_not_under_the_candidates():
    """For a box around the finding at 1x, 2x, 4x its area: IoU falls as 1/r; the candidates fall faster or to 0."""
    spec = compose.load_spec(str(REPO / "recipes/rewards/candidates/iou_size.yaml"))
    scores = {name: [run(m, box, T)["score"] for box in (SAME, TWICE, FOUR)]
              for name, m in (("iou", iou), ("f1iou", f1iou), ("size", size), ("giou", giou))}
    assert scores["iou"] == [1.0, 0.5, 0.25]
    assert scores["f1iou"] == [1.0, 1.0, 0.0] and scores["size"] == [1.0, 0.5, 0.0]
    combo = [compose.compute_score("medrl/grounding", f"<think>x</think><answer>{b}</answer>", T, {}, spec=spec)
             for b in (SAME, TWICE, FOUR)]
    assert [c["score"] for c in combo] == pytest.approx([1.0, 0.6 * 0.5 + 0.3 * 0.5 + 0.1, 0.6 * 0.25 + 0.1])
    assert [c["iou/area_ratio"] for c in combo] == pytest.approx([1.0, 2.0, 4.0])


def test_growing_into_overlap_earns_size_credit_only_under_iou_pairing():
    """A box of the true size beside T, then grown 1.25x until it overlaps: IoU pairing pays the growth
    (0 -> 1 - ln 1.25 / ln 4), distance pairing takes it away (1 -> the same value)."""
    grown = "[0.4375, 0.25, 0.75, 0.5]"  # TOUCH widened by 1/16 to the left: area 1.25/16, IoU 1/20
    after = 1 - math.log(1.25) / math.log(4)
    assert [run(size, b, T)["score"] for b in (TOUCH, grown)] == pytest.approx([0.0, after])
    assert [run(size, b, T, pairing="distance")["score"] for b in (TOUCH, grown)] == pytest.approx([1.0, after])


def test_monitor_rules():
    t = [(0.25, 0.25, 0.5, 0.5)]
    assert box_growth.monitor([(0.25, 0.25, 0.5, 0.75)], t, match_boxes([(0.25, 0.25, 0.5, 0.75)], t), False) == {
        "area_ratio": 2.0, "hit50": 1.0}
    assert box_growth.monitor([], t, [], False) == {"area_ratio": 1.0, "hit50": 0.0}  # nothing matched: neutral
    assert box_growth.monitor([], [], [], True) == {"area_ratio": 1.0, "hit50": 1.0}  # correct no finding
    assert box_growth.monitor([], [], [], False) == {"area_ratio": 1.0, "hit50": 0.0}
    assert matched_area_ratio(t, t, []) is None


def test_every_grounding_reward_returns_the_monitor_and_iou_matches_it():
    for module in (iou, giou, f1iou, size):
        res = run(module, A_B2_E, AB)
        assert (res["area_ratio"], res["hit50"]) == (1.5, 1.0), module.__name__


def test_giou_and_diou_closed_forms():
    a, b = (0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)
    # IoU 1/7; hull 9/16, union 7/16 -> GIoU 1/7 - 2/9; centres 1/4 apart on each axis, hull diagonal^2 9/8
    assert giou_of(a, b) == pytest.approx(1 / 7 - 2 / 9) and diou(a, b) == pytest.approx(1 / 7 - (1 / 8) / (9 / 8))
    assert giou_of(a, a) == 1.0 and diou(a, a) == 1.0
    assert giou_of((0, 0, 0, 0), (0, 0, 0, 0)) == -1.0  # no area anywhere: the floor, not a division by zero


@pytest.mark.parametrize("target", ["giou", "f1iou", "size", *(str(p.relative_to(REPO)) for p in sorted(
    (REPO / "recipes/rewards/candidates").glob("*.yaml")))])
def test_candidates_keep_the_contract(target, monkeypatch):
    monkeypatch.chdir(REPO)
    report = run_check(target, repeats=1)
    assert report.ok, report.summary()

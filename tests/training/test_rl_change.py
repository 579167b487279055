"""The RL stage's paired change (medrl.training.rl_change) on hand-made scored rows."""

import math

import pytest

from medrl.training import rl_change


def rec(key: str, iou: float, pred: list, true: list, index: int = 0) -> dict:
    return {"key": key, "index": index, "metrics": {"iou": iou, "acc@0.5": 1.0 if iou >= 0.5 else 0.0},
            "pred_boxes": pred, "true_boxes": true, "score": iou, "answer": str(pred), "ground_truth": str(true)}


T = [0.2, 0.2, 0.4, 0.4]  # area 0.04


def test_paired_change_and_its_standard_error_by_hand():
    before = [rec("a", 0.2, [T], [T]), rec("b", 0.4, [T], [T]), rec("c", 0.6, [T], [T])]
    after = [rec("c", 0.6, [T], [T]), rec("a", 0.5, [T], [T]), rec("b", 0.4, [T], [T]), rec("z", 1.0, [T], [T])]
    miou, acc, area = rl_change.compare(before, after)
    # rows a, b, c only (z has no "before"); diffs 0.3, 0.0, 0.0
    assert miou.n == 3 and miou.diff == pytest.approx(0.1)
    assert miou.se == pytest.approx(math.sqrt(0.03) / math.sqrt(3))  # stdev of (0.3, 0, 0) = sqrt(0.03)
    assert miou.before == pytest.approx(0.4) and miou.after == pytest.approx(0.5)
    assert acc.diff == pytest.approx(1 / 3) and acc.before == pytest.approx(1 / 3)
    assert area.diff == pytest.approx(0.0) and area.before == pytest.approx(1.0)


def test_boxes_that_doubled_in_every_row_are_called_growth():
    big = [0.2, 0.2, 0.4, 0.6]  # twice T's area, contains T
    before = [rec(k, 0.9, [T], [T]) for k in "abcd"]
    after = [rec(k, 0.5, [big], [T]) for k in "abcd"]
    area = rl_change.compare(before, after)[2]
    assert area.n == 4 and math.exp(area.diff) == pytest.approx(2.0) and area.after == pytest.approx(2.0)
    text = rl_change.sentence(area)
    assert text.startswith("Box size grew") and "2.00 times" in text


def test_a_change_within_two_standard_errors_is_called_noise():
    before = [rec(k, v, [T], [T]) for k, v in zip("abcd", (0.3, 0.5, 0.3, 0.5))]
    after = [rec(k, v, [T], [T]) for k, v in zip("abcd", (0.4, 0.4, 0.4, 0.45))]  # diffs +.1 -.1 +.1 -.05
    miou = rl_change.compare(before, after)[0]
    assert rl_change.verdict(miou.diff, miou.se) == "noise"
    assert "did not change beyond noise" in rl_change.sentence(miou)
    up = rl_change.compare(before, [rec(k, v + 0.3, [T], [T]) for k, v in zip("abcd", (0.3, 0.5, 0.3, 0.5))])[0]
    assert rl_change.verdict(up.diff, up.se) == "up"  # constant diffs: standard error 0, a rise
    assert up.se == pytest.approx(0.0)


def test_verdict_words():
    assert rl_change.verdict(0.1, 0.01) == "up"
    assert rl_change.verdict(-0.1, 0.01) == "down"
    assert rl_change.verdict(0.01, 0.01) == "noise"
    assert rl_change.verdict(0.1, math.nan) == "noise"


def test_rows_without_a_matched_box_do_not_enter_the_size_change():
    before = [rec("a", 0.0, [], [T]), rec("b", 0.5, [T], [T])]
    after = [rec("a", 0.5, [T], [T]), rec("b", 0.5, [T], [T])]
    area = rl_change.compare(before, after)[2]
    assert area.n == 1
    assert rl_change.compare([], after)[0].n == 0
    assert "no rows to compare" in rl_change.sentence(rl_change.compare([], after)[0])


def test_rows_picked_by_the_stated_rule():
    before = [rec(k, 0.5, [T], [T], i) for i, k in enumerate("abcde")]
    after = [rec(k, 0.5 + d, [T], [T], i) for i, (k, d) in enumerate(zip("abcde", (0.1, -0.3, 0.0, 0.2, 0.05)))]
    picks = rl_change.pick_rows(before, after)
    assert [k for _, k in picks] == ["b", "e", "d"]  # largest fall, median change (+0.05), largest rise
    assert picks[0][0] == "largest fall (-0.30)" and picks[1][0].startswith("median change")
    one = rl_change.pick_rows(before[:1], after[:1])
    assert len(one) == 1  # one row: one panel, not three copies
    assert rl_change.pick_rows(before, []) == []


def nofinding(key: str, acc: float, index: int = 0) -> dict:
    """A scored no-finding row as `medrl eval` writes it: no IoU (None), acc@0.5 1 for a correct answer."""
    return {"key": key, "index": index, "metrics": {"iou": None, "acc@0.5": acc}, "pred_boxes": [], "true_boxes": [],
            "score": acc, "answer": "No finding", "ground_truth": "[]"}


def test_no_finding_rows_count_in_acc50_but_not_in_miou():
    # VinDr-like: 2 rows with a box, 2 without. mIoU as medrl eval reports it (rows with a true box):
    # 0.2 -> 0.6 on both boxed rows, +0.4; counting no-finding rows as IoU 0 would give +0.2.
    before = [rec("a", 0.2, [T], [T]), rec("b", 0.2, [T], [T]), nofinding("c", 1.0), nofinding("d", 0.0)]
    after = [rec("a", 0.6, [T], [T]), rec("b", 0.6, [T], [T]), nofinding("c", 1.0), nofinding("d", 1.0)]
    miou, acc, _ = rl_change.compare(before, after)
    assert miou.n == 2 and miou.diff == pytest.approx(0.4) and miou.before == pytest.approx(0.2)
    assert miou.se == pytest.approx(0.0)
    assert acc.n == 4 and acc.diff == pytest.approx(0.75) and acc.before == pytest.approx(0.25)  # a, b, d rose


def test_rows_picked_among_those_with_a_true_box():
    before = [nofinding("n1", 1.0, 0), rec("a", 0.5, [T], [T], 1), nofinding("n2", 1.0, 2), rec("b", 0.5, [T], [T], 3),
              rec("c", 0.5, [T], [T], 4), nofinding("n3", 1.0, 5)]
    after = [nofinding("n1", 1.0, 0), rec("a", 0.2, [T], [T], 1), nofinding("n2", 1.0, 2), rec("b", 0.6, [T], [T], 3),
             rec("c", 0.9, [T], [T], 4), nofinding("n3", 1.0, 5)]
    assert [k for _, k in rl_change.pick_rows(before, after)] == ["a", "b", "c"]  # the median is b, not a no-finding row
    only_none = [nofinding("n1", 1.0), nofinding("n2", 0.0, 1)]
    assert [k for _, k in rl_change.pick_rows(only_none, only_none)] == ["n1", "n2"]  # no boxed rows: from all rows


def test_table_has_a_row_per_metric():
    before = [rec(k, 0.3, [T], [T]) for k in "ab"]
    after = [rec(k, 0.6, [T], [T]) for k in "ab"]
    lines = rl_change.table(rl_change.compare(before, after))
    assert lines[2].startswith("| mIoU | 0.300 | 0.600 | +0.300 |")
    assert lines[4].startswith("| box/true area | 1.00 | 1.00 | x1.00 |")

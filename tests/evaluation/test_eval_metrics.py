"""Evaluation metrics: RadVLM-style mAP@0.5, matched IoU, ROUGE-L, BLEU-1..4, summary statistics."""

from __future__ import annotations

import math

import pytest

from medrl.evaluation import metrics

A = (0.1, 0.1, 0.4, 0.4)
B = (0.6, 0.6, 0.9, 0.9)
C = (0.1, 0.6, 0.3, 0.9)
A_NEAR = (0.12, 0.1, 0.42, 0.4)  # IoU with A about 0.88


def test_average_precision_voc_all_point():
    assert metrics.average_precision([A], [A]) == 1.0
    # A correct box then a false one: recall reaches 1 at precision 1 -> AP 1.
    assert metrics.average_precision([A, B], [A]) == pytest.approx(1.0)
    # The false box first: recall 1 only at precision 1/2 -> AP 0.5 (order matters, as in RadVLM).
    assert metrics.average_precision([B, A], [A]) == pytest.approx(0.5)
    # One of two true boxes found: AP 0.5.
    assert metrics.average_precision([A], [A, C]) == pytest.approx(0.5)
    # Two true, predictions hit, miss, hit: P/R (1, .5), (.5, .5), (2/3, 1) -> .5*1 + .5*(2/3).
    assert metrics.average_precision([A, B, C], [A, C]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # A duplicate of a matched box is a false positive, not a second hit.
    assert metrics.average_precision([A, A_NEAR], [A]) == pytest.approx(1.0)
    assert metrics.average_precision([A, A_NEAR], [A, B]) == pytest.approx(0.5)
    assert metrics.average_precision([(0.1, 0.1, 0.2, 0.2)], [A]) == 0.0  # IoU 1/9 < 0.5


def test_empty_sides_score_zero_unless_no_finding_is_credited():
    assert metrics.average_precision([], [A]) == 0.0
    assert metrics.average_precision([A], []) == 0.0
    assert metrics.sample_ap([], [], no_finding=True) == 0.0  # RadVLM: a correct no finding earns nothing
    assert metrics.sample_ap([], [], no_finding=True, credit_no_finding=True) == 1.0
    assert metrics.sample_ap([], [], no_finding=False, credit_no_finding=True) == 0.0  # silence is no answer
    assert metrics.sample_ap([A], [], no_finding=True, credit_no_finding=True) == 0.0


def test_grounding_metrics_counts_misses_and_extra_boxes():
    m = metrics.grounding_metrics([A], [A, B], no_finding=False)
    assert m["iou"] == pytest.approx(0.5) and m["acc@0.5"] == 1.0 and m["ap@0.5"] == pytest.approx(0.5)
    m = metrics.grounding_metrics([A, B, C], [A], no_finding=False)
    assert m["iou"] == pytest.approx(1 / 3) and m["acc@0.5"] == 0.0
    m = metrics.grounding_metrics([], [], no_finding=True)
    assert m["iou"] is None and m["acc@0.5"] == 1.0 and m["ap@0.5"] == 0.0


def test_area_ratio_per_row_median_and_plain_warning():
    grown, same = [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.25, 0.25]
    assert metrics.grounding_metrics([grown], [same], no_finding=False)["area_ratio"] == pytest.approx(4.0)
    assert metrics.grounding_metrics([], [same], no_finding=False)["area_ratio"] is None
    assert metrics.grounding_metrics([], [], no_finding=True)["area_ratio"] is None
    recs = [{"pred_boxes": [grown], "true_boxes": [same]}, {"pred_boxes": [same], "true_boxes": [same]},
            {"pred_boxes": [[0, 0, 0.25, 0.5]], "true_boxes": [same]}, {"pred_boxes": [], "true_boxes": [same]}]
    assert metrics.median_area_ratio(recs) == pytest.approx(2.0)  # median of 4, 1, 2; the row without a box is out
    assert math.isnan(metrics.median_area_ratio(recs[3:]))
    assert metrics.area_ratio_note(2.0).startswith("WARNING: the model's boxes are 2.00 times the true area")
    assert "boxes have grown" in metrics.area_ratio_note(1.51)
    assert "too small" in metrics.area_ratio_note(0.66)
    assert metrics.area_ratio_note(1.5).startswith("Box size:") and metrics.area_ratio_note(0.67).startswith("Box size:")
    assert "no predicted box overlaps" in metrics.area_ratio_note(math.nan)


def test_rouge_l_and_lcs():
    assert metrics.lcs_length("a b c d e".split(), "a c e".split()) == 3
    assert metrics.lcs_length([], ["a"]) == 0
    hyp, ref = "the lungs are clear".split(), "lungs are clear today and fine".split()
    p, r = 3 / 4, 3 / 6
    assert metrics.rouge_l(hyp, ref) == pytest.approx(2 * p * r / (p + r))
    assert metrics.rouge_l(ref, ref) == 1.0 and metrics.rouge_l(["x"], ref) == 0.0


def test_bleu_matches_nltk_and_the_training_reward():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    from medrl.rewards import bleu

    hyp, ref = "No pleural effusion. The heart is normal.", "The heart size is normal. No pleural effusion."
    got = metrics.report_metrics(hyp, ref)
    h, r = bleu.normalize_text(hyp), bleu.normalize_text(ref)
    for n in range(1, 5):
        want = sentence_bleu([r], h, weights=[1 / n] * n, smoothing_function=SmoothingFunction().method1)
        assert got[f"bleu{n}"] == pytest.approx(want)
    # BLEU-4 here is the training reward's BLEU.
    assert got["bleu4"] == pytest.approx(bleu.compute_score("medrl/report", hyp, ref)["bleu"])
    assert got["bleu1"] > got["bleu4"] > 0
    assert metrics.report_metrics("", ref) == {"bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0, "rouge_l": 0.0}


def test_summary_stats():
    s = metrics.summary_stats([1.0, 2.0, None, 4.0, float("nan")])
    assert s["n"] == 3 and s["mean"] == pytest.approx(7 / 3) and s["median"] == 2.0
    assert s["min"] == 1.0 and s["max"] == 4.0
    assert s["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 3))
    assert metrics.summary_stats([1.0, 3.0])["median"] == 2.0
    assert metrics.summary_stats([])["mean"] is None


@pytest.mark.parametrize("spec", ["recipes/rewards/candidates/giou.yaml", "recipes/rewards/candidates/iou_size.yaml",
                                  "recipes/rewards/candidates/f1iou.yaml"])
def test_eval_reads_boxes_from_each_grounding_candidate(spec, repo_root, monkeypatch):
    from medrl.evaluation.evaluate import EvalOptions, score_rows
    from medrl.evaluation.rows import EvalRow

    monkeypatch.chdir(repo_root)
    row = EvalRow("k", 0, "medrl/grounding", [], [], "[[0, 0, 0.25, 0.25]]")
    (rec,) = score_rows([row], {"k": "<think>x</think><answer>[0, 0, 0.5, 0.5]</answer>"}, EvalOptions(reward=spec))
    assert rec["task"] == "grounding" and rec["pred_boxes"] == [[0.0, 0.0, 0.5, 0.5]]
    assert rec["metrics"]["iou"] == pytest.approx(0.25) and rec["metrics"]["area_ratio"] == pytest.approx(4.0)

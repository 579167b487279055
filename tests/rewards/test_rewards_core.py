"""Exact behaviour of the IoU, BLEU, format, VQA and enhanced rewards on hand-made answers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from medrl.boxes import from_norm1, smart_resize
from medrl.rewards import answer, bleu, enhanced, format as fmt, iou, vqa

TRUE = [[0.1, 0.2, 0.5, 0.6]]


# --- answer sections -------------------------------------------------------------------------
@pytest.mark.parametrize("text,section,where", [
    ("<think>a [0.9,0.9,1,1]</think><answer>b</answer>", "b", "answer"),
    ("<think>a</think> b", "b", "after_think"),
    ("<think>x</think><think>y</think> tail", "tail", "after_think"),
    ("plain b", "plain b", "whole"),
    ("<answer>unclosed", "unclosed", "answer"),
    ("<ANSWER>Up</ANSWER>", "Up", "answer"),
])
def test_answer_section(text, section, where):
    assert answer.answer_section(text) == (section, where)


# --- IoU -----------------------------------------------------------------------------------
def score(sol, gt=TRUE, info=None, **kw):
    return iou.compute_score("medrl/grounding", sol, json.dumps(gt) if isinstance(gt, list) else gt, info, **kw)


def test_iou_perfect_partial_and_keys():
    assert score("<answer>[0.1, 0.2, 0.5, 0.6]</answer>")["score"] == pytest.approx(1.0)
    half = score("<answer>[0.3, 0.2, 0.5, 0.6]</answer>")
    assert half["score"] == pytest.approx(0.5) and half["n_pred"] == 1 and half["n_true"] == 1
    assert tuple(half) == iou.KEYS


def test_iou_reads_answer_section_not_reasoning():
    sol = "<think>maybe [0.6, 0.6, 0.9, 0.9]</think><answer>[0.1, 0.2, 0.5, 0.6]</answer>"
    assert score(sol)["score"] == pytest.approx(1.0)
    assert score("<think>maybe [0.6, 0.6, 0.9, 0.9]</think> [0.1, 0.2, 0.5, 0.6]")["score"] == pytest.approx(1.0)


def test_iou_false_boxes_and_misses_both_cost():
    two_true = [[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]]
    one = score("[0.1, 0.1, 0.3, 0.3]", two_true)
    assert one["score"] == pytest.approx(0.5) and one["n_matched"] == 1
    extra = score("[0.1, 0.2, 0.5, 0.6] [0.7, 0.7, 0.8, 0.8] [0.0, 0.9, 0.1, 1.0]")
    assert extra["score"] == pytest.approx(1 / 3)


def test_iou_matching_is_one_to_one_and_optimal():
    # Greedy (first pred to its best truth) would pair A with T2 and leave T1 with nothing.
    truths = [[0.0, 0.0, 0.4, 0.4], [0.2, 0.0, 0.6, 0.4]]
    preds = "[0.15, 0.0, 0.55, 0.4] [0.0, 0.0, 0.35, 0.4]"
    from medrl.boxes import iou as box_iou
    best = box_iou((0.15, 0, 0.55, 0.4), truths[1]) + box_iou((0, 0, 0.35, 0.4), truths[0])
    assert score(preds, truths)["score"] == pytest.approx(best / 2)
    dup = score("[0.1, 0.2, 0.5, 0.6] [0.1, 0.2, 0.5, 0.6]")  # the same box twice is one hit, one false box
    assert dup["score"] == pytest.approx(0.5)


def test_iou_no_finding_rules():
    assert score("<answer>No abnormalities detected.</answer>", [])["score"] == pytest.approx(0.8)
    assert score("<answer>No abnormalities detected.</answer>", [], no_finding_score=0.5)["score"] == 0.5
    assert score("<answer>Nodule at [0.1, 0.1, 0.2, 0.2]</answer>", [])["score"] == 0.0
    assert score("<answer>I am not sure.</answer>", [])["score"] == 0.0
    assert score("<answer>No abnormalities detected.</answer>")["score"] == 0.0  # truth has a box
    assert score("", "")["score"] == 0.0


@pytest.mark.parametrize("gt", [
    "[[0.1, 0.2, 0.5, 0.6]]", [[0.1, 0.2, 0.5, 0.6]], [0.1, 0.2, 0.5, 0.6], np.array([[0.1, 0.2, 0.5, 0.6]]),
    np.array([np.array([0.1, 0.2, 0.5, 0.6])], dtype=object), {"bbox_2d": [0.1, 0.2, 0.5, 0.6]},
    '[{"bbox_2d": [0.1, 0.2, 0.5, 0.6]}]',
])
def test_iou_ground_truth_shapes(gt):
    assert iou.compute_score("g", "[0.1, 0.2, 0.5, 0.6]", gt)["score"] == pytest.approx(1.0)


def test_iou_box_conventions():
    w, h = 1000, 800
    info = {"width": w, "height": h}
    true = TRUE[0]
    px = from_norm1(true, "abs", w, h)
    assert score(f"[{px[0]:.0f}, {px[1]:.0f}, {px[2]:.0f}, {px[3]:.0f}]", info=info, box_convention="abs")["score"] \
        == pytest.approx(1.0)
    k = from_norm1(true, "norm1000")
    assert score(f"[{k[0]:.0f}, {k[1]:.0f}, {k[2]:.0f}, {k[3]:.0f}]", box_convention="norm1000")["score"] \
        == pytest.approx(1.0)
    rz = from_norm1(true, "abs_resized", w, h, max_pixels=512 * 28 * 28)
    sol = f"<|box_start|>({rz[0]:.1f},{rz[1]:.1f}),({rz[2]:.1f},{rz[3]:.1f})<|box_end|>"
    got = score(sol, info={**info, "max_pixels": 512 * 28 * 28}, box_convention="abs_resized")
    assert got["score"] == pytest.approx(1.0)
    assert smart_resize(h, w, max_pixels=512 * 28 * 28) != (h, w)  # the resize really mattered
    # Without the image size a pixel box cannot be placed: it counts as a drawn, unmatched box.
    miss = score("[100, 160, 500, 480]", box_convention="abs")
    assert miss["score"] == 0.0 and miss["n_pred"] == 1
    assert score("[0.1, 0.2, 0.5, 0.6]", box_convention="auto")["score"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="box_convention"):
        score("[0.1, 0.2, 0.5, 0.6]", box_convention="pixels")


def test_iou_json_answer_and_points():
    assert score('{"bbox_2d": [0.1, 0.2, 0.5, 0.6], "label": "nodule"}')["score"] == pytest.approx(1.0)
    assert score("(0.1,0.2),(0.5,0.6)")["score"] == pytest.approx(1.0)


# --- BLEU ----------------------------------------------------------------------------------
def test_bleu_identical_normalised_scores_one():
    ref = "Small left pleural effusion. No pneumothorax."
    assert bleu.compute_score("r", f"<answer>small LEFT pleural effusion; no pneumothorax!</answer>", ref)["score"] == 1.0
    assert bleu.compute_score("r", "<answer>No finding</answer>", "no finding.")["score"] == 1.0
    assert bleu.compute_score("r", "", "no finding")["score"] == 0.0
    assert bleu.compute_score("r", "", "")["score"] == 0.0


def test_bleu_equals_nltk_sentence_bleu():
    rnd = random.Random(1)
    words = "the a heart lung is normal small left right effusion no pneumothorax".split()
    smooth = SmoothingFunction().method1
    for _ in range(2000):
        ref = [rnd.choice(words) for _ in range(rnd.randint(1, 15))]
        hyp = [rnd.choice(words) for _ in range(rnd.randint(0, 15))]
        assert bleu.sentence_bleu4(hyp, tuple(ref)) == pytest.approx(
            sentence_bleu([ref], hyp, smoothing_function=smooth), abs=1e-12)


def test_bleu_uses_answer_section_and_orders_quality():
    ref = "The heart size is normal. There is a small left pleural effusion."
    good = bleu.compute_score("r", "<think>x</think><answer>Heart size normal. Small left pleural effusion.</answer>", ref)
    bad = bleu.compute_score("r", "<think>heart size is normal small left pleural effusion</think><answer>ok</answer>",
                             ref)
    assert bad["score"] == 0.0 and 0 < good["score"] < 1  # the reasoning is not the answer
    assert bleu.compute_score("r", "x", np.array(["No finding."], dtype=object))["ref_len"] == 2


# --- format --------------------------------------------------------------------------------
@pytest.mark.parametrize("text,ok", [
    ("<think>a</think><answer>b</answer>", True), ("  <think>a</think>\n<answer>b</answer>\n", True),
    ("<think>a</think><answer></answer>", False), ("x<think>a</think><answer>b</answer>", False),
    ("<think>a</think><answer>b</answer>tail", False), ("<answer>b</answer>", False),
    ("<think>a</think><answer>b</answer><answer>c</answer>", False), ("<answer>b</answer><think>a</think>", False),
])
def test_format(text, ok):
    assert fmt.compute_score("x", text)["score"] == (1.0 if ok else 0.0)


@pytest.mark.parametrize("think", ["", "I look.", " spaced "])
def test_the_layout_written_is_the_layout_read(think):
    """`answer.reply` (SFT targets) is read back whole by the strict reader, the answer reader and the format reward."""
    text = answer.reply(think, "at [0.1, 0.2, 0.3, 0.4]")
    assert answer.strict_parts(text) == (think, "at [0.1, 0.2, 0.3, 0.4]")
    assert answer.answer_section(text) == ("at [0.1, 0.2, 0.3, 0.4]", "answer")
    assert answer.extract_think(text) == think.strip() and fmt.format_ok(text)
    assert answer.strict_parts(text + text) is None and answer.strict_parts(None) is None


# --- VQA -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sol,gt,ok", [
    ("<answer>Yes, there is.</answer>", "yes", True), ("No.", "Yes", False), ("The answer is (B)", "B", True),
    ("B. Effusion", "(B)", True), ("I think C", "C", False), ("Pleural effusion.", "pleural effusion", True),
    ("A pleural effusion", "Pleural Effusion", True), ("effusion", "pleural effusion", False),
    ("left lung", '["left lung", "left"]', True), ("right", np.array(["left", "right"], dtype=object), True),
    ("Yes.", "Yes, there is a pleural effusion.", True), ("No", "Yes, in the left lung.", False),
    ("There is a pleural effusion.", "pleural effusion", True),
    ("pneumothorax, effusion, nodule, mass, edema, fracture, cardiomegaly", "effusion", False),
    # A truth made only of articles keeps them (found by the round-trip property test).
    ("<answer>the</answer>", "the", True), ("<answer>a lung</answer>", "the", False),
])
def test_vqa(sol, gt, ok):
    assert vqa.compute_score("medrl/vqa", sol, gt)["score"] == (1.0 if ok else 0.0)


# --- enhanced ------------------------------------------------------------------------------
GOOD = ("<think>First I examine the lungs, then the heart. The opacity in the right lower lobe suggests "
        "consolidation; the differential includes atelectasis.</think>"
        "<answer>Consolidation in the right lower lobe located at [0.1, 0.2, 0.5, 0.6]. Recommend follow-up.</answer>")


def test_enhanced_parts_and_weights():
    res = enhanced.compute_score("medrl/grounding", GOOD, json.dumps(TRUE), {"answer": "Consolidation in the right lung."})
    assert tuple(res) == enhanced.KEYS and res["fallbacks"] == 0
    assert res["spatial"] == pytest.approx(1.0) and res["reasoning"] > 0.5
    parts = {k: res[k] for k in enhanced.PARTS}
    assert res["score"] == pytest.approx(sum(enhanced.WEIGHTS[k] * v for k, v in parts.items()))
    worse = enhanced.compute_score("medrl/grounding", "<answer>[0.6, 0.6, 0.9, 0.9]</answer>", json.dumps(TRUE))
    assert worse["score"] < res["score"] and worse["reasoning"] == 0.0


def test_enhanced_no_finding_rows_use_their_weights():
    sol = "<think>I check the lungs and heart systematically.</think><answer>No abnormalities detected.</answer>"
    res = enhanced.compute_score("g", sol, "[]")
    assert res["no_finding_truth"] == 1.0 and res["spatial"] == 1.0 and res["semantic"] == 1.0
    parts = {k: res[k] for k in enhanced.PARTS}
    assert res["score"] == pytest.approx(sum(enhanced.WEIGHTS_NO_FINDING[k] * v for k, v in parts.items()))
    boxed = enhanced.compute_score("g", "<answer>Mass at [0.1, 0.1, 0.3, 0.3]</answer>", "[]")
    assert boxed["spatial"] == 0.0 and boxed["semantic"] == 0.0 and boxed["score"] < res["score"]


def test_enhanced_negation_and_anatomy_weights():
    kb = enhanced.load_knowledge()
    m = enhanced.find_mentions("No pneumothorax or effusion. Cardiomegaly is present.", kb)
    assert m.abnormalities == {"cardiomegaly"} and m.negated == {"pneumothorax", "pleural effusion"}
    assert enhanced.box_region((0.45, 0.55, 0.7, 0.8), kb) == "heart"
    # Missing a heart box costs more than missing a bone box of the same size.
    heart, rib = (0.45, 0.55, 0.7, 0.8), (0.0, 0.0, 0.08, 0.08)
    found_rib = enhanced.spatial_part([rib], [heart, rib], False, kb)
    found_heart = enhanced.spatial_part([heart], [heart, rib], False, kb)
    assert found_heart > found_rib


def test_knowledge_base_is_data_with_enough_entries():
    kb = enhanced.load_knowledge()
    assert len(kb.region_weight) >= 5 and len(kb.severity) >= 7
    assert all(0 <= w <= 1 for w in kb.region_weight.values())


def test_enhanced_falls_back_to_iou_and_counts(tmp_path, monkeypatch):
    bad = tmp_path / "kb.yaml"
    bad.write_text("regions: {heart: {weight: 2}}\n")
    res = enhanced.compute_score("g", "[0.3, 0.2, 0.5, 0.6]", json.dumps(TRUE), knowledge=str(bad))
    assert res["fallbacks"] == 4 and res["score"] == pytest.approx(0.5) and res["spatial"] == pytest.approx(0.5)

    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(enhanced, "reasoning_part", broken)
    res = enhanced.compute_score("g", GOOD, json.dumps(TRUE))
    assert res["fallbacks"] == 1 and res["reasoning"] == res["iou"] == pytest.approx(1.0)


def test_no_eval_in_reward_code():
    root = Path(__file__).resolve().parents[2]
    files = list((root / "src/medrl/rewards").rglob("*.py")) + list((root / "custom_reward").glob("*.py"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        for banned in ("eval(", "literal_eval", "exec("):
            assert banned not in text, f"{path} contains {banned}"

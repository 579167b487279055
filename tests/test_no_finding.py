"""One no-finding rule (medrl.no_finding): the converter and the rewards agree on every phrase."""

from __future__ import annotations

import re

import pytest

from medrl.data import rejects
from medrl.data.records import grounding_truth
from medrl.data.rejects import RejectError
from medrl.no_finding import NO_FINDING_PHRASES, states_no_finding
from medrl.rewards import change, compose, iou

# The phrases issue 12 measured disagreeing between converter and reward, and the examples of the rule.
SAYS_NO_FINDING = ["Unremarkable.", "Nodule not seen.", "No evidence of pneumothorax", "Within normal limits",
                   "No boxes", "No abnormalities or lesions are detected on this Chest X-ray.", "No finding",
                   "No change."] + [example for _, example in NO_FINDING_PHRASES]
SAYS_A_FINDING = ["Cardiomegaly is present.", "There is a nodule in the left lung.",
                  "There is no pneumothorax here? Effusion.", "A building has been built at the top left."]


@pytest.mark.parametrize("pattern,example", NO_FINDING_PHRASES)
def test_each_phrase_matches_its_example(pattern, example):
    assert re.search(pattern, example, re.I), example
    assert states_no_finding(example.upper()) and states_no_finding(f"<think>x</think> {example.lower()}")


@pytest.mark.parametrize("answer", SAYS_NO_FINDING)
def test_converter_and_rewards_agree_on_no_finding(answer):
    truth, shown = grounding_truth(answer, None, None)  # the converter: a no-finding truth, not a reject
    assert truth == "[]" and shown == answer.strip()
    reply = f"<think>I look.</think><answer>{shown}</answer>"
    assert iou.compute_score("medrl/grounding", reply, truth)["score"] == iou.NO_FINDING_SCORE
    assert compose.compute_score("medrl/grounding", reply, truth)["iou"] == iou.NO_FINDING_SCORE
    assert change.compute_score("medrl/change_action", reply, truth)["score"] == change.NO_CHANGE_SCORE


@pytest.mark.parametrize("answer", SAYS_A_FINDING)
def test_converter_and_rewards_agree_on_a_finding_without_box(answer):
    assert not states_no_finding(answer)
    with pytest.raises(RejectError) as exc:
        grounding_truth(answer, None, None)
    assert exc.value.reason == rejects.NOT_GROUNDING
    assert iou.compute_score("medrl/grounding", f"<answer>{answer}</answer>", "[]")["score"] == 0.0


def test_untrusted_text_is_bounded():
    assert not states_no_finding(None) and not states_no_finding("x" * 30_000 + " no finding")

"""The change reward (medrl.rewards.change): scores, numpy truths, tolerance, never raising, verl's reward loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medrl.rewards import change as reward

TRUTH = json.dumps([0.4, 0.5, 0.2])


@pytest.mark.parametrize("reply,truth,info,want", [
    ("<answer>[0.4, 0.5, 0.2]</answer>", TRUTH, None, 1.0),
    ("<answer>[0.3, 0.4, 0.5, 0.6]</answer>", TRUTH, None, 1.0),                 # the box with that vector
    ("<answer>[0.3, 0.4, 0.5, 0.6]</answer>", "[[0.3,0.4,0.5,0.6]]", None, 1.0),  # truth as a box
    ("<answer>[120, 160, 200, 240]</answer>", TRUTH, {"width": 400, "height": 400}, 1.0),  # pixels
    ("<answer>[0.5, 0.6, 0.3]</answer>", TRUTH, None, 0.6),                      # 0.1 off everywhere
    ("<answer>[0.9, 0.9, 0.9]</answer>", TRUTH, None, 0.0),
    ("the change is somewhere", TRUTH, None, 0.0),
    ("<answer>No change.</answer>", "[]", None, 0.8),
    ("<answer>[0.1, 0.1, 0.2]</answer>", "[]", None, 0.0),
    ("<answer>[0.4, 0.5, 0.2]</answer>", "", {"action": np.array([0.4, 0.5, 0.2])}, 1.0),
])
def test_change_reward_scores(reply, truth, info, want):
    out = reward.compute_score("medrl/change_action", reply, truth, info)
    assert tuple(out) == reward.KEYS
    assert out["score"] == pytest.approx(want, abs=1e-6)


def test_change_reward_numpy_truth_and_tolerance():
    gt = np.array([np.array([0.3, 0.4, 0.5, 0.6])], dtype=object)  # how parquet hands nested lists back
    out = reward.compute_score("x", "<answer>[0.45, 0.5, 0.2]</answer>", gt, tolerance=0.1)
    assert out["score"] == pytest.approx(1 - math.sqrt(0.05 ** 2 / 3) / 0.1)
    assert out["iou"] > 0 and out["from_box"] == 0.0 and out["parsed"] == 1.0


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.from_regex(r"<answer>\[[-0-9., eEnaif]{0,40}\]</answer>")),
       st.sampled_from([TRUTH, "[]", "[[0.1,0.1,0.2,0.2]]", "garbage", None, "[1,2]", {"ground_truth": TRUTH}]))
def test_change_reward_never_raises(reply, truth):
    out = reward.compute_score("medrl/change_action", reply, truth, {"width": "bad"})
    assert tuple(out) == reward.KEYS and 0.0 <= out["score"] <= 1.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())


def test_change_reward_file_through_verl_reward_loop(repo_root, tmp_path):
    from test_reward_verl import check, expected, run_reward_loop, verl_config

    from medrl.training.tiny_model import build_tokenizer

    rows = [("medrl/change_action", "<answer>[0.4, 0.5, 0.2]</answer>", TRUTH, {}),
            ("medrl/change_action", "<answer>[0.5, 0.6, 0.3]</answer>", TRUTH, {}),
            ("medrl/change_action", "<answer>No change</answer>", "[]", {}),
            ("medrl/change_action", "nothing", TRUTH, {})]
    tok = build_tokenizer(tmp_path / "tok")
    outs, rm = run_reward_loop(verl_config(str(repo_root / "custom_reward/change_reward.py"), "compute_score"),
                               rows, tok)
    want = expected(reward.compute_score, rows)
    check(outs, rm, want)
    assert [w["score"] for w in want] == pytest.approx([1.0, 0.6, 0.8, 0.0])

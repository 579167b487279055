"""The benchmarks' controls in medrl.bench: the shuffled-truth reward and the wall-clock budget rule."""

from __future__ import annotations

import pandas as pd
import pytest


def test_shuffled_reward_scores_training_rows_against_another_rows_truth(tmp_path):
    from medrl.bench import shuffled_reward

    truths = [f"[[0.{i}1, 0.{i}1, 0.{i}5, 0.{i}5]]" for i in range(1, 6)]
    path = tmp_path / "train.parquet"
    pd.DataFrame({"reward_model": [{"ground_truth": t} for t in truths],
                  "extra_info": [{"index": i, "split": "train"} for i in range(5)]}).to_parquet(path)
    donors = shuffled_reward.donor_truths(str(path), 0)
    assert sorted(donors.values()) == sorted(truths) and all(donors[i] != truths[i] for i in range(5))
    answer = truths[0][1:-1]  # the row's own box, exactly
    own = shuffled_reward.compute_score("medrl/grounding", answer, truths[0], {"index": 0, "split": "val"},
                                        truths=str(path))
    moved = shuffled_reward.compute_score("medrl/grounding", answer, truths[0], {"index": 0, "split": "train"},
                                          truths=str(path))
    assert own["iou"] == pytest.approx(1.0)  # validation keeps its own truth
    assert moved["iou"] < 1.0  # training is scored against another row's box


def test_budget_rule_stops_before_the_step_that_would_overrun():
    from medrl.bench.budget_trainer import next_is_last

    assert not next_is_last(100.0, [10.0, 10.0], 200.0)
    assert next_is_last(185.0, [10.0, 10.0], 200.0)  # 185 + 10 fits, 185 + 20 does not
    assert next_is_last(150.0, [10.0, 30.0, 10.0], 200.0)  # a slow recent step counts

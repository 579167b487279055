"""A CPU GRPO run (verl's real trainer, Ray reward workers) with a spec that composes a user's reward file.

The user's file is written by `medrl reward new`, referenced by a relative path from a spec
in another folder, and never imported by the driver: its keys in verl's validation metrics
show that the reward workers loaded and called it. About 2-3 minutes and 8 GB on 2 cores.
"""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import yaml

pytest.importorskip("verl")

# The edited rule: how many boxes the answer draws, and how many the truth has.
RULE = '''

def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """1 when the answer draws one box per lesion, 0.5 less for each box too many or too few."""
    from medrl.boxes import parse_boxes
    from medrl.rewards.iou import truth_boxes

    answer, _ = answer_section(solution_str)
    n_pred, n_true = len(parse_boxes(answer)), len(truth_boxes(ground_truth))
    return {"score": max(0.0, 1.0 - 0.5 * abs(n_pred - n_true)), "n_pred": float(n_pred), "n_true": float(n_true)}
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from medrl.cli import main
    from medrl.training.pipeline import run_pipeline
    from medrl.training.recipes import load_recipe

    work = tmp_path_factory.mktemp("user-reward-run")
    assert main(["reward", "new", "lesion", "--dir", str(work / "my_rewards")]) == 0
    reward = work / "my_rewards" / "lesion.py"
    text = reward.read_text()
    reward.write_text(text[:text.index("KEYS = ")] + 'KEYS = ("score", "n_pred", "n_true")\n' + RULE)
    assert main(["reward", "check", str(reward)]) == 0
    (work / "specs").mkdir()
    spec = work / "specs" / "grounding.yaml"
    spec.write_text("routes:\n  medrl/grounding:\n    - {name: iou, weight: 0.45}\n    - {name: format, weight: 0.05}\n"
                    "    - {path: ../my_rewards/lesion.py, weight: 0.5}\n")

    # cpu_tiny's GRPO stage alone, from the tiny random model, one step with validation before and after.
    raw = copy.deepcopy(load_recipe("cpu_tiny").raw)
    grpo = next(st for st in raw["stages"] if st["trainer"] == "ppo")
    grpo.pop("init_from", None)
    grpo["overrides"].update({"trainer.total_training_steps": 1, "trainer.save_freq": 1, "trainer.test_freq": 1,
                              "trainer.val_before_train": True, "data.max_response_length": 24})
    raw["stages"] = [grpo]
    raw["reward"]["kwargs"] = {"spec": str(spec)}
    recipe_file = work / "user_reward_grpo.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    out = work / "run"
    manifest = run_pipeline(load_recipe(recipe_file), out, echo=lambda line: print(line, flush=True))
    return out, manifest


@pytest.mark.slow
def test_grpo_with_a_composed_user_reward(run):
    out, manifest = run
    assert manifest["stages"]["grpo"]["status"] == "done"
    steps = {}
    for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        steps.setdefault(rec["step"], {}).update(rec["data"])
    assert 0.0 <= steps[1]["critic/score/mean"] <= 1.0
    val = steps[1]
    # The user's keys come back from the reward workers under the term's label ...
    for key in ("lesion", "lesion/n_pred", "lesion/n_true", "iou", "format"):
        assert f"val-aux/medrl/grounding/{key}/mean@1" in val, sorted(k for k in val if k.startswith("val-aux"))
    # ... with the values the user's rule gives: n_true is the mean true-box count of the validation rows.
    from medrl.rewards.iou import truth_boxes

    truths = [r["ground_truth"] for r in pd.read_parquet(out / "data" / "val.parquet")["reward_model"]]
    assert val["val-aux/medrl/grounding/lesion/n_true/mean@1"] == pytest.approx(
        sum(len(truth_boxes(t)) for t in truths) / len(truths))

"""The one rule for which task a row is about (medrl.rewards.tasks) and the callers that use it."""

from __future__ import annotations

import pytest

from medrl.rewards.tasks import TASKS, row_task, task_in


@pytest.mark.parametrize("ability, data_source, rewards, tasks, expected", [
    ("grounding", "my/anything", (), TASKS, "grounding"),             # the row's ability first
    ("", "medrl/change_grounding", (), TASKS, "grounding"),           # grounding before change
    ("", "medrl/change_caption", (), TASKS, "change"),                # the judge has a change prompt ...
    ("", "medrl/change_caption", (), ("grounding", "report", "vqa"), "report"),  # ... medrl eval does not
    ("change_action", "medrl/change_action", ("change",), ("grounding", "report", "vqa"), None),
    ("", "MIMIC-CXR/Report", (), TASKS, "report"),                    # case does not matter
    ("", "my/lesions", ("format", "iou"), TASKS, "grounding"),        # else the first reward that says
    ("", "my/notes", ("judge",), TASKS, None),
    (None, None, (), TASKS, None),
])
def test_row_task(ability, data_source, rewards, tasks, expected):
    assert row_task(ability, data_source, rewards, tasks) == expected


def test_callers_share_the_rule():
    """The judge's prompt category, medrl eval's task and the preflight's truth check agree with row_task."""
    from medrl.data.check_rules import P_TRUTH, row_problems
    from medrl.evaluation.evaluate import task_of
    from medrl.evaluation.rows import EvalRow
    from medrl.rewards.judge import JudgeConfig, load_prompts, pick_category

    prompts = load_prompts(None)
    assert pick_category("medrl/change_caption", {}, JudgeConfig(), prompts) == "change"
    assert pick_category("my/notes", {}, JudgeConfig(), prompts) == "default"
    row = EvalRow(key="k", index=0, data_source="medrl/change_caption", messages=[], images=[], ground_truth="x")
    assert task_of(row, ["bleu"]) == "report"
    assert task_of(EvalRow("k", 0, "my/notes", [], [], "x"), ["judge"]) == "other"
    assert task_in("a recipe for grounding", ("grounding", "report")) == "grounding"
    bad_box = {"reward_model": {"ground_truth": "[[0.5, 0.2, 0.1, 0.6]]"}}  # x2 < x1
    for ability, ds, checked in (("", "medrl/change_grounding", True), ("grounding", "my/x", True),
                                 ("report", "my/x", False)):
        found = row_problems({**bad_box, "ability": ability, "data_source": ds}, "images", "prompt",
                             lambda _: None, None, {})
        assert (P_TRUTH in [p for p, _ in found]) == checked

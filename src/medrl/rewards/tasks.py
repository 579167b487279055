"""Which task a row (or a recipe) is about: grounding, report, vqa or change.

The one rule, for the judge's prompt category, `medrl eval`'s task metrics, the preflight's
ground-truth check and the rehearsal's bundled sample: a row's `ability` when it names a
task, else the first task pattern its ability or data_source matches, else the task of the
first reward its route uses. Callers pass the tasks they know (`tasks`): a pattern naming
another task is skipped, so `medrl/change_caption` is a `change` row for the judge (which has a
change prompt) and a `report` row for `medrl eval` (which has no change metrics).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Collection, Sequence

TASKS = ("grounding", "report", "vqa", "change")
# In order: `change_grounding` is grounding before it is change; `caption` is a report.
TASK_PATTERNS = (("*grounding*", "grounding"), ("*change*", "change"), ("*report*", "report"),
                 ("*caption*", "report"), ("*vqa*", "vqa"))
REWARD_TASKS = {"iou": "grounding", "giou": "grounding", "f1iou": "grounding", "size": "grounding",
                "enhanced": "grounding", "bleu": "report", "findings": "report",
                "radgraph": "report", "chexbert": "report", "vqa": "vqa", "change": "change"}


def task_in(text: Any, tasks: Collection[str] = TASKS) -> str | None:
    """The task of the first pattern in TASK_PATTERNS that `text` (a data_source, ability or name) matches."""
    low = str(text or "").lower()
    for pattern, task in TASK_PATTERNS:
        if task in tasks and fnmatch.fnmatchcase(low, pattern):
            return task
    return None


def row_task(ability: Any, data_source: Any, reward_names: Sequence[str] = (),
             tasks: Collection[str] = TASKS) -> str | None:
    """A row's task among `tasks` (see the module rule); None when nothing says."""
    if ability in tasks:
        return str(ability)
    found = task_in(ability, tasks) or task_in(data_source, tasks)
    if found:
        return found
    return next((REWARD_TASKS[n] for n in reward_names if REWARD_TASKS.get(n) in tasks), None)

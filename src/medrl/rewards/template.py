"""`medrl reward new NAME`: a reward file with verl's signature and its pytest file, ready to edit."""

from __future__ import annotations

from pathlib import Path

REWARD = '''"""{name}: <say in one line what this reward scores>.

Rule (replace it, and the cases in test_{name}.py with it): 1 when the answer
section names the ground truth (case-insensitive), else 0; `has_answer` says
whether the reply had an <answer>...</answer> section.

Contract, checked by `medrl reward check {name}.py` and by test_{name}.py:
- verl calls compute_score(data_source=, solution_str=, ground_truth=, extra_info=,
  **reward_kwargs) once per rollout, in its reward workers (other processes);
- it never raises on model output: solution_str may be empty, huge, cut off, in any script;
- it returns the keys in KEYS on every call, each a finite number, "score" in SCORE_RANGE;
- the same input gives the same result, and a call takes well under a millisecond.

Use it in a medrl reward spec (the path is relative to the spec file):

    routes:
      medrl/grounding:
        - {{name: iou, weight: 0.8}}
        - {{path: {name}.py, weight: 0.2}}
"""

from __future__ import annotations

from typing import Any

from medrl.rewards.answer import answer_section

KEYS = ("score", "has_answer")
SCORE_RANGE = (0.0, 1.0)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """Score in SCORE_RANGE and the other KEYS for one rollout (see the module rule)."""
    answer, found_in = answer_section(solution_str)
    truth = str(ground_truth).strip().lower()
    hit = bool(truth) and truth in answer.lower()
    return {{"score": 1.0 if hit else 0.0, "has_answer": 1.0 if found_in == "answer" else 0.0}}
'''

TEST = '''"""Tests of {name}.py: the reward contract, and the cases that define its rule.

Run them with `pytest test_{name}.py`; edit the rule's cases when you change the rule.
"""

from pathlib import Path

import pytest

from medrl.rewards.contract import run_check
from medrl.rewards.user_reward import load_reward_file

FILE = Path(__file__).resolve().with_name("{name}.py")
REWARD = load_reward_file(FILE)  # loaded as verl's reward workers load it through a spec


def score(solution: str, ground_truth, extra_info=None) -> dict:
    return REWARD.raw(data_source="medrl/grounding", solution_str=solution, ground_truth=ground_truth,
                      extra_info=extra_info or {{}})


# (model reply, ground truth, expected score): the cases that define the rule.
CASES = [
    ("<think>Enlarged heart.</think><answer>Cardiomegaly.</answer>", "cardiomegaly", 1.0),
    ("<think>Clear lungs.</think><answer>No abnormality.</answer>", "cardiomegaly", 0.0),
    ("cardiomegaly", "cardiomegaly", 1.0),  # no tags: the whole reply is the answer
    ("", "cardiomegaly", 0.0),
]


@pytest.mark.parametrize("solution, ground_truth, expected", CASES)
def test_rule(solution, ground_truth, expected):
    assert score(solution, ground_truth)["score"] == expected


def test_keys_are_the_same_on_every_call():
    # Model replies can be anything; ground truths are what `medrl prepare` writes (boxes as JSON).
    for solution in ("", "<answer>x</answer>", "<think>unclosed"):
        assert tuple(score(solution, "[[0.1, 0.2, 0.3, 0.4]]")) == REWARD.keys


def test_contract():
    # Empty, huge, unicode and broken replies, malformed boxes, every number notation.
    report = run_check(str(FILE))
    assert report.ok, report.summary()
'''


def write_template(name: str, folder: str | Path = ".", force: bool = False) -> list[Path]:
    """Write `<folder>/<name>.py` and `<folder>/test_<name>.py` (atomically); refuse to overwrite unless `force`."""
    from medrl.atomic import atomic_open
    from medrl.rewards.registry import BUILTIN_REWARDS

    if not name.isidentifier() or name.startswith("test_"):
        raise ValueError(f"reward name {name!r} must be a Python identifier not starting with test_ (e.g. lesion)")
    if name in BUILTIN_REWARDS:
        raise ValueError(f"{name!r} is a built-in reward; choose another name (e.g. my_{name})")
    folder = Path(folder)
    files = {folder / f"{name}.py": REWARD, folder / f"test_{name}.py": TEST}
    existing = [str(p) for p in files if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        with atomic_open(path, "w", encoding="utf-8") as fh:
            fh.write(text.format(name=name))
    return list(files)

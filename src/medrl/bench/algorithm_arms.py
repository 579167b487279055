"""Algorithm arms of bench_learning: the verl keys each algorithm recipe adds over grpo_grounding, as a CPU arm runs them.

An arm is a GRPO-trainer run plus exactly the keys `recipes/<name>_grounding.yaml` sets on the
GRPO stage it takes from grpo_grounding (`from:`), read from the recipe files. DAPO's are shrunk
as `medrl rehearse` shrinks them (`rehearse.dapo_changes`), and every arm's final keys go through
medrl's pre-launch algorithm check (`algorithms.stage_report`) before anything launches.
"""

from __future__ import annotations

from typing import Any

from medrl.training.algorithms import ERROR, stage_report
from medrl.training.recipes import Recipe, load_recipe
from medrl.training.rehearse import dapo_changes

# grpo (the arm as it is) and the algorithms of recipes/<name>_grounding.yaml.
ALGORITHMS = ("grpo", "gspo", "dapo", "dr_grpo", "rloo", "reinforce_pp")
BASE_RECIPE = "grpo_grounding"


def recipe_additions(name: str) -> dict[str, Any]:
    """The verl keys recipes/<name>_grounding.yaml sets on its GRPO stage beyond grpo_grounding's ({} for grpo)."""
    if name == "grpo":
        return {}
    base = load_recipe(BASE_RECIPE).stage("grpo").overrides
    own = load_recipe(f"{name}_grounding").stage("grpo").overrides
    return {k: v for k, v in own.items() if k not in base or base[k] != v}


def algorithm_arms(names: str | None) -> dict[str, dict[str, Any]]:
    """{arm name: the keys its recipe adds} for `--algorithm-arms` (comma-separated algorithm names)."""
    arms: dict[str, dict[str, Any]] = {}
    for name in [n.strip() for n in (names or "").split(",") if n.strip()]:
        if name not in ALGORITHMS:
            raise ValueError(f"--algorithm-arms: {name!r} is not one of {', '.join(ALGORITHMS)}")
        if name in arms:
            raise ValueError(f"--algorithm-arms: {name!r} given twice")
        arms[name] = recipe_additions(name)
    return arms


def shrunk(algorithm: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    """An algorithm's keys over the arm's GRPO `stage` overrides, DAPO's shrunk as `medrl rehearse` shrinks them."""
    return {**algorithm, **{key: value for key, value, _ in dapo_changes({**stage, **algorithm})}}


def check_arm(name: str, recipe: Recipe) -> list[str]:
    """medrl's pre-launch algorithm check on an arm's GRPO stage: its report lines; an error raises, naming the arm."""
    report, findings = stage_report(recipe, recipe.stage("grpo"))
    errors = [f.message for f in findings if f.level == ERROR]
    if errors:
        raise ValueError(f"--algorithm-arms: the {name} arm's keys fail the pre-launch algorithm check:\n  "
                         + "\n  ".join(errors))
    return [f"arm {name}:"] + report

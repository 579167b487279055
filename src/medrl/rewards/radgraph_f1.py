"""RadGraph F1 reward (optional, learned): RG_ER of the answer against the reference, radgraph-xl model.

RG_ER ("partial" reward level of the `radgraph` package) matches entities with their labels
and whether each has a relation; the figure most report-generation papers give. Needs
`pip install 'medrl[learned]'` and the weights (see `medrl.rewards.learned`); an empty answer or
reference scores 0 (as the package does). Range [0, 1].
"""

from __future__ import annotations

from typing import Any

from medrl.rewards import learned

KEYS = ("score", "radgraph_f1")
MODEL = "radgraph-xl"
METRIC = learned.LearnedMetric(
    "radgraph", "radgraph", f"{learned.WEIGHTS_REPO}/{MODEL}.tar.gz",
    lambda pkg: pkg.F1RadGraph(reward_level="partial", model_type=MODEL))


def load() -> Any:
    """Load the package and the weights now (a spec that names this reward calls it when it loads)."""
    return learned.load(METRIC)


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """RadGraph F1 (RG_ER) in [0, 1] of the answer section against the reference."""
    answer, reference = learned.texts(solution_str, ground_truth)
    value = 0.0
    if answer.strip() and reference.strip():
        _, rewards, _, _ = load()(hyps=[answer], refs=[reference])
        value = learned.clamp(rewards[0])
    return {"score": value, "radgraph_f1": value}

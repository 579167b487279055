"""Learned report metrics, optional: loading their packages and weights, with errors that say which.

RadGraph F1 (`medrl.rewards.radgraph_f1`, reward `radgraph`) and CheXbert F1
(`medrl.rewards.chexbert_f1`, reward `chexbert`) run BERT-sized models from PyPI packages that
medrl does not install: `pip install 'medrl[learned]'` (radgraph 0.1.18, f1chexbert 0.0.2).
Both download their weights from the Hugging Face hub repository StanfordAIMI/RRG_scorers on
first use (into the hub or radgraph cache). A spec that names one loads the package and the
weights when the spec loads (`medrl.rewards.registry` calls the module's `load`), in every
process that scores, so a missing package or weights that cannot be read is a
`LearnedMetricError` naming the package and the weights before a job starts, not at step 40.
They need a GPU to keep up with a rollout batch; `findings` is the CPU reward.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable

from medrl.rewards.answer import answer_section
from medrl.rewards.bleu import reference_text

WEIGHTS_REPO = "StanfordAIMI/RRG_scorers"
MAX_CHARS = 4_000  # both models read at most 512 tokens


class LearnedMetricError(ValueError):
    """A learned metric's package is missing or its weights cannot be loaded."""


@dataclass(frozen=True)
class LearnedMetric:
    """A learned metric: its reward name, its PyPI package, its weights, and how to build its scorer."""

    name: str
    package: str
    weights: str  # "<hub repository>/<file>", said in errors
    build: Callable[[Any], Any]  # the imported package -> a scorer


_SCORERS: dict[str, Any] = {}


def load(metric: LearnedMetric) -> Any:
    """The metric's scorer, built once per process; a LearnedMetricError naming package and weights if not."""
    if metric.name in _SCORERS:
        return _SCORERS[metric.name]
    install = f"pip install 'medrl[learned]' (or pip install {metric.package})"
    try:
        package = importlib.import_module(metric.package)
    except ImportError as exc:
        raise LearnedMetricError(
            f"reward {metric.name!r} needs the package {metric.package!r}, which is not installed ({exc}); "
            f"{install}. It then loads the weights {metric.weights} from the Hugging Face hub.") from exc
    try:
        scorer = metric.build(package)
    except Exception as exc:  # re-raised with its cause: any failure here is the weights' download or load
        raise LearnedMetricError(
            f"reward {metric.name!r}: the package {metric.package!r} is installed but the weights {metric.weights} "
            f"cannot be loaded ({type(exc).__name__}: {exc}). On a machine without internet access, download "
            f"them where there is access and copy the cache over (HF_HOME), or use the rule-based 'findings' "
            f"reward.") from exc
    _SCORERS[metric.name] = scorer
    return scorer


def texts(solution_str: Any, ground_truth: Any) -> tuple[str, str]:
    """(answer section, reference report) as the learned metrics read them, clipped to what a BERT reads."""
    return answer_section(solution_str)[0][:MAX_CHARS], reference_text(ground_truth)[:MAX_CHARS]


def clamp(value: Any) -> float:
    """A metric's value as a score in [0, 1]; anything not a finite number is 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 0.0
    return min(1.0, max(0.0, v)) if math.isfinite(v) else 0.0

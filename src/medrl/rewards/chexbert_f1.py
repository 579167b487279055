"""CheXbert F1 reward (optional, learned): F1 of the answer's CheXbert labels against the reference's.

The `f1chexbert` package labels each report with the 14 CheXpert observations ("rrg" mode:
positive or uncertain is 1, negative or not mentioned 0); the score is the F1 of the answer's
positive labels against the reference's, over the 14 (micro, one row). No positive label on
either side scores 0. Needs `pip install 'medrl[learned]'` and the weights (see
`medrl.rewards.learned`). Range [0, 1].
"""

from __future__ import annotations

from typing import Any

from medrl.rewards import learned

KEYS = ("score", "chexbert_f1")


def _build(pkg: Any) -> Any:
    import torch

    return pkg.F1CheXbert(device="cuda" if torch.cuda.is_available() else "cpu")


METRIC = learned.LearnedMetric("chexbert", "f1chexbert", f"{learned.WEIGHTS_REPO}/chexbert.pth", _build)


def load() -> Any:
    """Load the package and the weights now (a spec that names this reward calls it when it loads)."""
    return learned.load(METRIC)


def labels(text: str) -> list[int]:
    """The 14 CheXbert labels of a report (1: positive or uncertain)."""
    out = load().get_label(text)
    if out and isinstance(out[0], (list, tuple)):  # releases that label a batch
        out = out[0]
    return [int(v == 1) for v in out]


def label_f1(pred: list[int], true: list[int]) -> float:
    """F1 of two 0/1 label vectors over their positive labels; 0 when neither has one."""
    tp, n = sum(a & b for a, b in zip(pred, true)), sum(pred) + sum(true)
    return 2 * tp / n if n else 0.0


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """CheXbert F1 in [0, 1] of the answer section against the reference."""
    answer, reference = learned.texts(solution_str, ground_truth)
    value = learned.clamp(label_f1(labels(answer), labels(reference))) if answer.strip() else 0.0
    return {"score": value, "chexbert_f1": value}

"""GIoU (or DIoU) reward for grounding: one-to-one matched boxes scored by how close they are, not only how they overlap.

    score = sum over matched pairs of (g + 1) / 2  /  max(#true, #predicted),   g = GIoU (or DIoU) in [-1, 1]

Pairs are matched one to one (Hungarian) on the mapped value (g + 1) / 2, so a box that misses its
finding still earns something and earns more the nearer it is: IoU gives 0 to every box that
does not overlap, GIoU and DIoU do not. GIoU subtracts the empty part of the box enclosing both;
DIoU (`kind: diou`) subtracts the squared centre distance over the squared diagonal of that box.
A perfect box scores 1; a far-off box about 0.25; no box 0. Missed true boxes and extra boxes cost
as in the IoU reward (the max(#true, #predicted) divisor; a drawn box that cannot be placed counts).
Empty truth (no finding): the IoU reward's rule (`no_finding_score` for a stated no finding
without a box, else 0). A truth that does not read scores 0. Range [0, 1].

Keys: `score`, `giou` (the same value), counts, and the box-growth monitor (`area_ratio`, `hit50`,
from IoU matching: `medrl.rewards.box_growth`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from medrl.boxes import Box, diou, giou, match_boxes
from medrl.rewards import box_growth
from medrl.rewards.iou import NO_FINDING_SCORE, GroundingParse, no_finding_credit, pairs_value, read_answer

KEYS = ("score", "giou", "n_pred", "n_true", "n_matched", "parsed", "no_finding", *box_growth.KEYS)
KINDS = {"giou": giou, "diou": diou}


def _mapped(fn: Callable[[Sequence[float], Sequence[float]], float]) -> Callable[[Sequence[float], Sequence[float]], float]:
    return lambda a, b: (fn(a, b) + 1.0) / 2.0


_SIMILARITY = {k: _mapped(fn) for k, fn in KINDS.items()}


def matched_giou(pred: Sequence[Box], true: Sequence[Box], n_pred: int, kind: str = "giou") -> tuple[float, int]:
    """(sum of matched (g + 1) / 2 / max(#true, n_pred), matched pairs); 0 when either side is empty."""
    pairs = match_boxes(pred, true, _SIMILARITY[kind])
    return pairs_value(pairs, n_pred, len(true)), len(pairs)


def score_details(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", no_finding_score: float = NO_FINDING_SCORE, kind: str = "giou",
                  **kwargs: Any) -> tuple[dict, GroundingParse]:
    """The GIoU reward (keys `KEYS`) and what it read."""
    if kind not in KINDS:
        raise ValueError(f"giou reward: unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    parse, n_pred = read_answer(solution_str, ground_truth, extra_info, box_convention, kwargs, "giou")
    value, n_matched = matched_giou(parse.pred, parse.true, n_pred, kind)
    score = value if parse.true else no_finding_credit(parse.no_finding, no_finding_score)
    result = {"score": score, "giou": value, "n_pred": float(n_pred), "n_true": float(len(parse.true)),
              "n_matched": float(n_matched), "parsed": 1.0 if (n_pred or parse.no_finding) else 0.0,
              "no_finding": 1.0 if parse.no_finding else 0.0,
              **box_growth.monitor(parse.pred, parse.true, parse.pairs, parse.no_finding)}
    return result, parse


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", no_finding_score: float = NO_FINDING_SCORE, kind: str = "giou",
                  **kwargs: Any) -> dict:
    """GIoU (or DIoU) grounding reward in [0, 1] with keys `KEYS` (see the module rule)."""
    return score_details(data_source, solution_str, ground_truth, extra_info, box_convention, no_finding_score, kind,
                         **kwargs)[0]

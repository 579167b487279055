"""IoU reward for abnormality grounding: one-to-one matched boxes, misses and false boxes both cost.

score = sum of IoUs of the Hungarian-matched (predicted, true) pairs / max(#true, #predicted).
Empty truth ("no finding"): an answer with no box that states no finding scores
`no_finding_score` (0.8, as in the seed); any box, or silence, scores 0.
Non-empty truth and no box: 0. Range [0, 1].

Every row also carries the box-growth monitor (`medrl.rewards.box_growth`): `area_ratio`
(predicted / true area of the IoU-matched boxes) and `hit50` (share of true boxes matched at
IoU >= 0.5), so verl logs both beside the score.

`iou_mode: region` scores instead the IoU of the union of predicted boxes against the
union of true boxes (`medrl.rewards.region_iou`): one box over two adjacent lesions,
or two boxes over one, is then as good as the truth's own boxes. A drawn box that
cannot be placed (no image size) scales that IoU by placed / drawn boxes, as a false
box would lower it; `n_matched` counts the true boxes the predicted region overlaps.

Predicted boxes are read from the answer section (`medrl.rewards.answer`) and
converted to [0, 1] with `box_convention` (norm1 | norm1000 | abs | abs_resized | auto)
and the original image size in `extra_info` (`width`, `height`, optional
`min_pixels`/`max_pixels`). Ground-truth boxes are stored in [0, 1] and read with the
converters' strict reader (`medrl.boxes.read_truth_boxes`); a truth that does not read
scores 0 (`medrl check` names such rows). "States no finding" is `medrl.no_finding`,
the rule the converters use for their no-finding truths.

`score_details` returns the result together with what it read (`GroundingParse`), so
that evaluation reports IoU, acc@0.5 and mAP from the very boxes the score came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Sequence

from medrl.boxes import Box, BoxError, check_convention, match_boxes, parse_boxes, read_truth_boxes, to_norm1
from medrl.no_finding import states_no_finding
from medrl.rewards import box_growth
from medrl.rewards.answer import answer_section
from medrl.rewards.region_iou import region_iou, region_overlaps

KEYS = ("score", "iou", "n_pred", "n_true", "n_matched", "parsed", "no_finding", *box_growth.KEYS)
NO_FINDING_SCORE = 0.8
IOU_MODES = ("match", "region")


@dataclass(frozen=True)
class GroundingParse:
    """What the IoU reward read from one row: the boxes it scored, in [0, 1], and how it read them."""

    pred: list[Box]
    true: list[Box]
    pairs: list[tuple[int, int, float]]
    no_finding: bool  # the answer draws no box and states no finding
    convention: str
    truth_error: str | None = None  # why the ground truth did not read (then the score is 0)


@lru_cache(maxsize=65536)
def _truth_from_text(text: str) -> tuple[Box, ...]:
    return tuple(read_truth_boxes(text))


def truth_boxes(ground_truth: Any) -> list[Box]:
    """Ground-truth boxes in [0, 1] from a JSON string, list, dict or numpy array; raises BoxError (cached for strings)."""
    if isinstance(ground_truth, dict) and "ground_truth" in ground_truth:
        ground_truth = ground_truth["ground_truth"]
    if isinstance(ground_truth, str):
        return list(_truth_from_text(ground_truth[:100_000]))
    try:
        return read_truth_boxes(ground_truth)
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        if isinstance(exc, BoxError):
            raise
        raise BoxError(f"ground truth does not read: {type(exc).__name__}") from exc


def image_geometry(extra_info: Any, kwargs: dict) -> tuple[float | None, float | None, int | None, int | None]:
    """(width, height, min_pixels, max_pixels) from extra_info, then reward kwargs."""
    info = extra_info if isinstance(extra_info, dict) else {}

    def pick(key: str) -> Any:
        value = info.get(key, kwargs.get(key))
        if value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) and value > 0 else None

    min_px, max_px = pick("min_pixels"), pick("max_pixels")
    return pick("width"), pick("height"), int(min_px) if min_px else None, int(max_px) if max_px else None


def predicted_boxes(answer: str, convention: str = "auto", width: float | None = None, height: float | None = None,
                    min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[list[Box], int]:
    """Boxes of an answer in [0, 1], and how many parsed boxes could not be placed (missing image size)."""
    boxes, unplaced = [], 0
    if "[" not in answer and "(" not in answer:  # no box can be written without brackets
        return boxes, unplaced
    for raw in parse_boxes(answer):
        try:
            boxes.append(to_norm1(raw, convention, width, height, min_pixels, max_pixels))
        except BoxError:
            unplaced += 1
    return boxes, unplaced


def matched_iou(pred: Sequence[Box], true: Sequence[Box],
                n_pred: int | None = None) -> tuple[float, list[tuple[int, int, float]]]:
    """(sum of matched IoUs / max(#true, #pred), the matched pairs); 0 when both are empty.

    `n_pred` overrides the predicted count (boxes that were drawn but could not be placed).
    """
    pairs = match_boxes(pred, true)
    value = pairs_value(pairs, len(pred) if n_pred is None else n_pred, len(true))
    return value, pairs if value > 0 else []


def pairs_value(pairs: Sequence[tuple[int, int, float]], n_pred: int, n_true: int) -> float:
    """Sum of the pairs' values / max(n_pred, n_true), in [0, 1]; 0 when both counts are 0."""
    denom = max(n_pred, n_true)
    value = sum(v for _, _, v in pairs) / denom if denom else 0.0
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def no_finding_credit(no_finding: bool, no_finding_score: float = NO_FINDING_SCORE) -> float:
    """Score of a row whose truth has no box: `no_finding_score` (clipped to [0, 1]) for a stated no finding, else 0."""
    return min(1.0, max(0.0, float(no_finding_score))) if no_finding else 0.0


def read_answer(solution_str: str, ground_truth: Any, extra_info: Any, box_convention: str, kwargs: dict,
                reward: str = "iou") -> tuple[GroundingParse, int]:
    """What a grounding reward reads from one row (IoU-matched pairs) and how many boxes it drew, placed or not.

    The one reading every grounding reward shares: answer section, strict truth, lenient boxes in
    `box_convention`, "states no finding". A truth that does not read gives `truth_error` and no boxes.
    """
    check_convention(box_convention, f"{reward} reward: box_convention")
    answer, _ = answer_section(solution_str)
    try:
        true = truth_boxes(ground_truth)
    except BoxError as exc:
        return GroundingParse([], [], [], False, box_convention, str(exc)), 0
    pred, unplaced = predicted_boxes(answer, box_convention, *image_geometry(extra_info, kwargs))
    n_pred = len(pred) + unplaced
    no_finding = n_pred == 0 and states_no_finding(answer)
    return GroundingParse(pred, true, match_boxes(pred, true), no_finding, box_convention), n_pred


def score_boxes(pred: Sequence[Box], true: Sequence[Box], n_pred: int, no_finding: bool,
                pairs: Sequence[tuple[int, int, float]], no_finding_score: float = NO_FINDING_SCORE,
                iou_mode: str = "match") -> dict:
    """The IoU result (keys `KEYS`) of boxes already read, `n_pred` drawn (placed or not), IoU-matched as `pairs`."""
    if iou_mode == "region":
        value = region_iou(pred, true) * len(pred) / n_pred if n_pred else 0.0
        n_matched = region_overlaps(pred, true)
    else:
        value = pairs_value(pairs, n_pred, len(true))
        n_matched = len(pairs)
    return {
        "score": value if true else no_finding_credit(no_finding, no_finding_score),
        "iou": value,
        "n_pred": float(n_pred),
        "n_true": float(len(true)),
        "n_matched": float(n_matched),
        "parsed": 1.0 if (n_pred or no_finding) else 0.0,
        "no_finding": 1.0 if no_finding else 0.0,
        **box_growth.monitor(pred, true, pairs, no_finding),
    }


def score_answer(answer: str, true: Sequence[Box], convention: str = "auto", width: float | None = None,
                 height: float | None = None, min_pixels: int | None = None, max_pixels: int | None = None,
                 no_finding_score: float = NO_FINDING_SCORE, iou_mode: str = "match") -> tuple[dict, list[Box], list]:
    """The IoU result (keys `KEYS`) of an answer section, its predicted boxes in [0, 1], and the matched pairs."""
    pred, unplaced = predicted_boxes(answer, convention, width, height, min_pixels, max_pixels)
    n_pred = len(pred) + unplaced  # a box we cannot place is still a box the model drew
    no_finding = n_pred == 0 and states_no_finding(answer)
    pairs = match_boxes(pred, true)
    result = score_boxes(pred, true, n_pred, no_finding, pairs, no_finding_score, iou_mode)
    return result, pred, pairs if iou_mode == "match" else []


def score_details(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", no_finding_score: float = NO_FINDING_SCORE, iou_mode: str = "match",
                  **kwargs: Any) -> tuple[dict, GroundingParse]:
    """The grounding reward (keys `KEYS`) and what it read: the one parse that evaluation reports from."""
    check_convention(box_convention, "iou reward: box_convention")
    if iou_mode not in IOU_MODES:
        raise ValueError(f"iou reward: unknown iou_mode {iou_mode!r}; expected one of {IOU_MODES}")
    parse, n_pred = read_answer(solution_str, ground_truth, extra_info, box_convention, kwargs, "iou")
    if parse.truth_error is not None:
        return {**dict.fromkeys(KEYS, 0.0), **box_growth.NO_MATCH}, parse
    result = score_boxes(parse.pred, parse.true, n_pred, parse.no_finding, parse.pairs, no_finding_score, iou_mode)
    return result, parse if iou_mode == "match" else replace(parse, pairs=[])


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", no_finding_score: float = NO_FINDING_SCORE, iou_mode: str = "match",
                  **kwargs: Any) -> dict:
    """Grounding reward in [0, 1] with keys `KEYS` (see the module rule)."""
    return score_details(data_source, solution_str, ground_truth, extra_info, box_convention, no_finding_score,
                         iou_mode, **kwargs)[0]

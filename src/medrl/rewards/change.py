"""Change-localisation reward: a predicted action vector (or box) against the change's action vector.

The action vector `[cx, cy, scale]` of a box is defined in `medrl.change_action` (the
converter writes its ground truths with the same code).

Rule: the answer section (`medrl.rewards.answer`) is read for the first bracketed
list of 3 numbers (an action vector, each in [0, 1]) or 4 numbers (a box, placed in
[0, 1] with `box_convention` and the image size in extra_info, as the IoU reward
does). With err = sqrt(mean((pred - truth)^2)) over the three components,

    score = max(0, 1 - err / tolerance)        (tolerance 0.25 by default)

so an exact vector scores 1 and one off by `tolerance` or more in every component
scores 0. The truth is `reward_model.ground_truth`: a JSON action vector `[cx, cy, s]`
or a JSON list of [0, 1] boxes (one box; several are merged into their enclosing
box); `extra_info["action"]` is used when the ground truth has neither. An empty
truth means "no change": an answer without numbers that states no change or no
finding (`medrl.no_finding`, the converters' rule) scores `no_change_score` (0.8, like
the IoU reward's no-finding), anything else 0.
Range [0, 1]; never raises on model output; keys `KEYS` on every call.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from medrl.boxes import BoxError, check_convention, enclosing_box, find_box_candidates, iou, read_truth_boxes, to_norm1
from medrl.change_action import Action, action_box, action_vector
from medrl.no_finding import states_no_finding
from medrl.rewards.answer import answer_section
from medrl.rewards.iou import image_geometry

KEYS = ("score", "error", "center_error", "scale_error", "iou", "parsed", "from_box", "no_change")
TOLERANCE = 0.25
NO_CHANGE_SCORE = 0.8


def _valid_action(nums: Sequence[float]) -> Action | None:
    if len(nums) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nums):
        return None
    vals = tuple(float(v) for v in nums)
    if not all(math.isfinite(v) and -1e-9 <= v <= 1 + 1e-9 for v in vals):
        return None
    return tuple(min(1.0, max(0.0, v)) for v in vals)  # type: ignore[return-value]


def truth_action(ground_truth: Any, extra_info: Any = None) -> tuple[Action | None, tuple | None, bool]:
    """(truth action vector or None, truth box in [0,1] or None, empty truth = "no change")."""
    gt = ground_truth
    if isinstance(gt, dict):
        gt = gt.get("ground_truth", gt.get("action", gt))
    if hasattr(gt, "tolist") and not isinstance(gt, (str, bytes)):
        gt = gt.tolist()
    if isinstance(gt, bytes):
        gt = gt.decode("utf-8", "replace")
    if isinstance(gt, str):
        try:
            gt = json.loads(gt[:100_000])
        except (ValueError, RecursionError):
            pass
    if isinstance(gt, (list, tuple)):
        flat = [v.tolist() if hasattr(v, "tolist") else v for v in gt]
        act = _valid_action(flat)
        if act is not None:
            return act, None, False
        try:
            boxes = read_truth_boxes(flat)
        except BoxError:
            boxes = []
        if boxes:
            box = enclosing_box(boxes)
            return action_vector(box), box, False
        if len(flat) == 0:
            return None, None, True
    info = extra_info if isinstance(extra_info, dict) else {}
    act = info.get("action")
    if hasattr(act, "tolist"):
        act = act.tolist()
    if isinstance(act, (list, tuple)):
        act = _valid_action(list(act))
        if act is not None:
            return act, None, False
    return None, None, False


def predicted_action(answer: str, convention: str = "auto", width: float | None = None,
                     height: float | None = None, min_pixels: int | None = None,
                     max_pixels: int | None = None) -> tuple[Action | None, tuple | None]:
    """(action vector, [0,1] box or None) of the first usable 3- or 4-number list in the answer."""
    for cand in find_box_candidates(answer):
        nums = cand.numbers
        if len(nums) == 3:
            act = _valid_action(nums)
            if act is not None:
                return act, None
        elif len(nums) == 4 and all(math.isfinite(v) for v in nums):
            x1, y1, x2, y2 = nums
            raw = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
            try:
                box = to_norm1(raw, convention, width, height, min_pixels, max_pixels)
            except (BoxError, ValueError, ZeroDivisionError):
                continue
            box = tuple(min(1.0, max(0.0, v)) for v in box)
            return action_vector(box), box
    return None, None


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", tolerance: float = TOLERANCE,
                  no_change_score: float = NO_CHANGE_SCORE, **kwargs: Any) -> dict:
    """Change reward in [0, 1] with keys `KEYS` (see the module rule)."""
    check_convention(box_convention, "change reward: box_convention")  # a setting, not model output: raise
    result = {k: 0.0 for k in KEYS}
    try:
        tol = float(tolerance) if isinstance(tolerance, (int, float)) and tolerance > 0 else TOLERANCE
        answer, _ = answer_section(solution_str)
        truth, truth_box, empty = truth_action(ground_truth, extra_info)
        width, height, min_px, max_px = image_geometry(extra_info, kwargs)
        pred, pred_box = predicted_action(answer, box_convention, width, height, min_px, max_px)
        result["parsed"] = 1.0 if pred is not None else 0.0
        result["from_box"] = 1.0 if pred_box is not None else 0.0
        if empty or truth is None:
            said = pred is None and states_no_finding(answer)
            result["no_change"] = 1.0 if said else 0.0
            if said and empty:
                result["parsed"] = 1.0
                result["score"] = min(1.0, max(0.0, float(no_change_score)))
            return result
        if pred is None:
            return result
        diffs = [p - t for p, t in zip(pred, truth)]
        err = math.sqrt(sum(d * d for d in diffs) / 3)
        result["error"] = err
        result["center_error"] = math.hypot(diffs[0], diffs[1])
        result["scale_error"] = abs(diffs[2])
        result["iou"] = iou(pred_box or action_box(pred), truth_box or action_box(truth))
        score = 1.0 - err / tol
        result["score"] = min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0
    except Exception:  # noqa: BLE001 - a reward must never raise on model output
        result = {k: 0.0 for k in KEYS}
    return result

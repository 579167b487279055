"""Bounding boxes: finding them in text, coordinate conventions, IoU, GIoU, one-to-one matching, area ratio.

Ground truth has one strict reader (a malformed box is a `BoxError` whose message is
the reject reason), used by every converter, the preflight and the rewards:
`truth_boxes_in_text` for boxes written in an answer, `read_truth_boxes` for stored
values (JSON, lists, numpy arrays). Model output is read leniently (`parse_boxes`:
take what parses, never raise).

Conventions (the `convention` argument):
- ``norm1``: floats in [0, 1] relative to the image (RadVLM answers, medrl's storage).
- ``norm1000``: integers in [0, 1000] relative to the image (Qwen2-VL, Qwen3-VL).
- ``abs``: pixels of the original image (needs its width and height).
- ``abs_resized``: pixels of the image after the Qwen2.5-VL processor's
  ``smart_resize`` (needs the original size and the processor's min/max pixels).
- ``auto``: ``norm1`` when every coordinate is within [0, 1]; otherwise ``abs``
  when the image size is known and the box fits inside it; otherwise
  ``norm1000`` when every coordinate is within [0, 1000]; otherwise unknown.
  ``auto`` cannot tell ``abs`` from ``abs_resized``: name the convention of a
  Qwen2.5-VL policy explicitly.
"""

from __future__ import annotations

import json
import math
import re
from math import isfinite
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from medrl.plain import plain

Box = tuple[float, float, float, float]

CONVENTIONS = ("norm1", "norm1000", "abs", "abs_resized", "auto")

# Qwen2.5-VL image processor defaults (preprocessor_config.json).
QWEN_PATCH_FACTOR = 28
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 16384

# Bounded pieces keep the regexes linear on adversarial text.
_NUM = r"[-+]?(?:\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})(?:[eE][-+]?\d{1,4})?|[-+]?(?:nan|NaN|NAN|inf|Inf|INF)"
_SEP = r"\s{0,8}[,;]?\s{0,8}"
_BRACKET_RE = re.compile(rf"\[\s{{0,8}}((?:{_NUM})(?:\s{{0,8}},\s{{0,8}}(?:{_NUM})){{0,15}})\s{{0,8}},?\s{{0,8}}\]")
_POINTS_RE = re.compile(
    rf"\(\s{{0,8}}({_NUM})\s{{0,8}},\s{{0,8}}({_NUM})\s{{0,8}}\){_SEP}\(\s{{0,8}}({_NUM})\s{{0,8}},\s{{0,8}}({_NUM})\s{{0,8}}\)"
)
_NUM_RE = re.compile(_NUM)
# The way datasets write boxes, `[0.12, 0.34, 0.56, 0.78]`: each such match is also a _BRACKET_RE
# match of the same span and numbers, so a text whose every "[" starts one (and with no "(")
# has exactly these candidates. One regex pass instead of two, about half the time.
_D = r"(\d{1,30}(?:\.\d{1,30})?)"
_PLAIN_BOX_RE = re.compile(rf"\[{_D}, {_D}, {_D}, {_D}\]")

# Model output is untrusted and may be megabytes long: cap what we look at.
MAX_TEXT_CHARS = 20_000
MAX_BOXES = 64


class BoxError(ValueError):
    """A box in the data is malformed; the message is the reject reason."""


class BoxCandidate(NamedTuple):
    """A group of numbers in text that looks like a box; `numbers` may have the wrong count.

    A named tuple, not a frozen dataclass: it is made for every box of every record and
    rollout, and a frozen dataclass costs about four times as much to create.
    """

    numbers: tuple[float, ...]
    start: int
    end: int
    kind: str  # "bracket" for [..] lists (incl. JSON bbox_2d), "points" for (x1,y1),(x2,y2)


def find_box_candidates(text: str, limit: int = MAX_BOXES) -> list[BoxCandidate]:
    """Find bracketed number lists and point pairs in `text`, in reading order."""
    if not isinstance(text, str) or not text:
        return []
    if "(" not in text and len(text) <= MAX_TEXT_CHARS:
        plain = [BoxCandidate((float(a), float(b), float(c), float(d)), m.start(), m.end(), "bracket")
                 for m in _PLAIN_BOX_RE.finditer(text) for a, b, c, d in (m.groups(),)]
        if len(plain) == text.count("["):
            return plain[:limit]
    text = text[:MAX_TEXT_CHARS]
    found: list[BoxCandidate] = []
    taken: list[tuple[int, int]] = []
    # A text without "(" or "[" has no candidate: the regexes are skipped (most answer text).
    if "(" in text:
        for m in _POINTS_RE.finditer(text):
            found.append(BoxCandidate(tuple(map(float, m.groups())), m.start(), m.end(), "points"))
            taken.append(m.span())
    if "[" in text:
        for m in _BRACKET_RE.finditer(text):
            start = m.start()
            if taken and any(s <= start < e for s, e in taken):
                continue
            found.append(BoxCandidate(tuple(map(float, _NUM_RE.findall(m.group(1)))), start, m.end(), "bracket"))
    if taken:
        found.sort(key=lambda c: c.start)  # only points and brackets can be out of order
    return found[:limit]


def check_box(numbers: Sequence[float]) -> str | None:
    """Return why `numbers` is not a valid box (x1, y1, x2, y2), or None if it is one."""
    if len(numbers) != 4:
        return f"box with {len(numbers)} numbers"
    if not all(math.isfinite(v) for v in numbers):
        return "box with NaN or infinite coordinate"
    x1, y1, x2, y2 = numbers
    if min(numbers) < 0:
        return "box with negative coordinate"
    if x2 < x1 or y2 < y1:
        return "box with x2 < x1 or y2 < y1"
    return None


def parse_boxes(text: str) -> list[Box]:
    """Leniently read every well-formed box from free model text (never raises)."""
    boxes = []
    for cand in find_box_candidates(text):
        nums = cand.numbers
        if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
            continue
        x1, y1, x2, y2 = nums
        # A swapped corner is a model's slip, not a different box.
        boxes.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return boxes


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_PATCH_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """Size (height, width) that the Qwen2-VL/2.5-VL processor resizes an image to."""
    # Mirrors transformers' qwen2_vl.image_processing_qwen2_vl.smart_resize (tested against it).
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def check_convention(convention: Any, who: str = "box_convention") -> str:
    """`convention` if it is one of CONVENTIONS, else a ValueError naming `who` and the valid names.

    The one check every reader of a box convention uses (rewards, `medrl eval`): a misspelt
    convention is a setting error, never silently read as `auto`.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"{who}: unknown box convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    return convention


def resolve_convention(box: Sequence[float], convention: str, width: float | None, height: float | None) -> str:
    """Apply the documented `auto` rule; other conventions are returned unchanged."""
    if check_convention(convention) != "auto":
        return convention
    top = max(box)
    if top <= 1.0:
        return "norm1"
    if width and height and box[2] <= width and box[3] <= height:
        return "abs"
    if top <= 1000.0:
        return "norm1000"
    return "unknown"


def _scale(conv: str, width: float | None, height: float | None,
           min_pixels: int | None, max_pixels: int | None) -> tuple[float, float]:
    """(x, y) divisors that take a box in convention `conv` to [0, 1]."""
    if conv == "norm1":
        return 1.0, 1.0
    if conv == "norm1000":
        return 1000.0, 1000.0
    if conv in ("abs", "abs_resized"):
        if not (width and height):
            raise BoxError("pixel box without a known image size")
        if conv == "abs":
            return float(width), float(height)
        rh, rw = smart_resize(int(height), int(width), min_pixels=min_pixels or QWEN_MIN_PIXELS,
                              max_pixels=max_pixels or QWEN_MAX_PIXELS)
        return float(rw), float(rh)
    if conv == "unknown":
        raise BoxError("coordinates above 1 with no known image size")
    check_convention(conv)
    raise AssertionError(f"convention {conv!r} has no scale")  # a new entry in CONVENTIONS needs one here


def to_norm1(
    box: Sequence[float],
    convention: str = "auto",
    width: float | None = None,
    height: float | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Box:
    """Convert one box to [0, 1] coordinates; raises BoxError when the convention needs a missing size."""
    sx, sy = _scale(resolve_convention(box, convention, width, height), width, height, min_pixels, max_pixels)
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 / sx, y1 / sy, x2 / sx, y2 / sy)


def from_norm1(box: Sequence[float], convention: str, width: int | None = None, height: int | None = None,
               min_pixels: int | None = None, max_pixels: int | None = None) -> Box:
    """Express a [0, 1] box in another convention (the inverse of `to_norm1`)."""
    sx, sy = _scale("norm1" if convention == "auto" else convention, width, height, min_pixels, max_pixels)
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


TRUTH_DECIMALS = 4  # stored ground truths and the SFT answers written from them use the same digits


def _truth_box(numbers: Sequence[Any], width: float | None, height: float | None) -> Box:
    """One ground-truth box in [0, 1], rounded to TRUTH_DECIMALS; raises BoxError with the reason."""
    if not all(_is_number(v) for v in numbers):
        raise BoxError(f"box {list(numbers)[:6]} is not a list of numbers")
    numbers = [float(v) for v in numbers]
    reason = check_box(numbers)
    if reason:
        raise BoxError(reason)
    # Data uses [0, 1] floats or pixels of the original image; 0-1000 is a
    # model-output convention, so a truth box above 1 needs the image size.
    if max(numbers) <= 1.0:
        box = tuple(numbers)
    elif width and height:
        box = to_norm1(numbers, "abs", width, height)
    else:
        raise BoxError("coordinates above 1 with no known image size")
    if max(box) > 1.0 + 1e-9:
        raise BoxError("box outside the image")
    box = tuple(round(v, TRUTH_DECIMALS) for v in box)
    if box[2] <= box[0] or box[3] <= box[1]:  # no IoU can score it: not a truth anybody can hit
        raise BoxError("box with zero width or height")
    return box  # type: ignore[return-value]


def _truth_floats(numbers: tuple[float, ...], width: float | None, height: float | None) -> Box:
    """`_truth_box` for numbers read from text (always floats): the same checks and reasons, in one pass."""
    if len(numbers) != 4:
        raise BoxError(f"box with {len(numbers)} numbers")
    x1, y1, x2, y2 = numbers
    if not (isfinite(x1) and isfinite(y1) and isfinite(x2) and isfinite(y2)):
        raise BoxError("box with NaN or infinite coordinate")
    if min(numbers) < 0:
        raise BoxError("box with negative coordinate")
    if x2 < x1 or y2 < y1:
        raise BoxError("box with x2 < x1 or y2 < y1")
    if max(numbers) > 1.0:
        if not (width and height):
            raise BoxError("coordinates above 1 with no known image size")
        sx, sy = float(width), float(height)  # to_norm1's "abs" scale
        x1, y1, x2, y2 = x1 / sx, y1 / sy, x2 / sx, y2 / sy
        if max(x1, y1, x2, y2) > 1.0 + 1e-9:
            raise BoxError("box outside the image")
    box = (round(x1, TRUTH_DECIMALS), round(y1, TRUTH_DECIMALS), round(x2, TRUTH_DECIMALS), round(y2, TRUTH_DECIMALS))
    if box[2] <= box[0] or box[3] <= box[1]:  # no IoU can score it: not a truth anybody can hit
        raise BoxError("box with zero width or height")
    return box


def truth_boxes_in_text(text: str, width: int | None = None, height: int | None = None) -> list[Box]:
    """Strictly read the boxes written in a ground-truth answer, in [0, 1]; raises BoxError.

    Boxes whose coordinates are all within [0, 1] are taken as normalised; any
    other box is read as pixels of the original image, which needs its size.
    """
    return truth_boxes_of(find_box_candidates(text, limit=10_000), width, height)


def truth_boxes_of(cands: Sequence[BoxCandidate], width: int | None = None, height: int | None = None) -> list[Box]:
    """`truth_boxes_in_text` of candidates already found (a caller that also rewrites them finds them once)."""
    return [_truth_floats(c.numbers, width, height) for c in cands]


def read_truth_boxes(value: Any, width: int | None = None, height: int | None = None,
                     zero_box_is_empty: bool = False) -> list[Box]:
    """Strictly read stored ground-truth boxes in [0, 1]; raises BoxError with the reason.

    `value` is a JSON string, a list, a (nested) numpy array, or a dict with `bbox_2d`,
    `bbox` or `boxes`: one box [x1, y1, x2, y2] or a list of boxes; empty or None means
    no box. Pixel boxes need the image size, as in `truth_boxes_in_text`. With
    `zero_box_is_empty`, a box of four zeros (LEVIR-CC's "no change") is no box.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value[:1_000_000])
        except (ValueError, RecursionError) as exc:
            raise BoxError("boxes are not JSON") from exc
    try:
        value = plain(value)
    except RecursionError as exc:
        raise BoxError("boxes nested too deeply") from exc
    if isinstance(value, dict):
        value = next((value[k] for k in ("bbox_2d", "bbox", "boxes") if k in value), None)
        if value is None:
            raise BoxError("boxes object has no bbox_2d, bbox or boxes")
    if value is None:
        return []
    if not isinstance(value, list):
        raise BoxError(f"boxes are {type(value).__name__}, not a list of boxes")
    items = [value] if value and all(_is_number(v) for v in value) else value
    boxes = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("bbox_2d", item.get("bbox"))
        if not isinstance(item, list):
            raise BoxError(f"box {str(item)[:60]} is not a list of numbers")
        if zero_box_is_empty and len(item) == 4 and all(_is_number(v) and v == 0 for v in item):
            continue
        boxes.append(_truth_box(item, width, height))
    return boxes


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, (int, float)) or type(v).__name__.startswith(("float", "int", "uint"))


def enclosing_box(boxes: Sequence[Sequence[float]]) -> Box:
    """The smallest box containing every box in a non-empty sequence."""
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def box_area(b: Sequence[float]) -> float:
    """Area of a box; zero for degenerate boxes."""
    w, h = b[2] - b[0], b[3] - b[1]
    return w * h if w > 0 and h > 0 else 0.0  # not max(): it runs for every box of every rollout


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes, in [0, 1]."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    if union <= 0 or not math.isfinite(union):
        return 0.0
    return max(0.0, min(1.0, inter / union))


def giou(a: Sequence[float], b: Sequence[float]) -> float:
    """Generalised IoU (Rezatofighi et al. 2019): IoU - (enclosing area - union) / enclosing area, in [-1, 1].

    Unlike IoU it still tells apart two boxes that do not overlap: the farther apart, the lower.
    """
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    # Conditional expressions, not min()/max(): this runs for every pair of every rollout.
    iw = (ax2 if ax2 < bx2 else bx2) - (ax1 if ax1 > bx1 else bx1)
    ih = (ay2 if ay2 < by2 else by2) - (ay1 if ay1 > by1 else by1)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = box_area(a) + box_area(b) - inter
    hull = ((ax2 if ax2 > bx2 else bx2) - (ax1 if ax1 < bx1 else bx1)) * \
        ((ay2 if ay2 > by2 else by2) - (ay1 if ay1 < by1 else by1))
    if not (hull > 0 and union > 0) or hull == math.inf or union == math.inf:
        return -1.0
    value = inter / union - (hull - union) / hull
    return -1.0 if value < -1.0 else 1.0 if value > 1.0 else value


def match_boxes(pred: Sequence[Sequence[float]], true: Sequence[Sequence[float]],
                similarity: Callable[[Sequence[float], Sequence[float]], float] | None = None) -> list[tuple[int, int, float]]:
    """One-to-one matching of predicted to true boxes maximising total IoU (Hungarian).

    Returns (pred_index, true_index, value) for each matched pair with value > 0. `similarity`
    replaces IoU as the value maximised (a non-negative score of two boxes, e.g. a mapped GIoU).
    """
    sim = similarity or iou
    if not pred or not true:
        return []
    if len(pred) == 1 and len(true) == 1:
        v = sim(pred[0], true[0])
        return [(0, 0, v)] if v > 0 else []
    if len(pred) <= 3 and len(true) <= 3:
        return _match_small(pred, true, sim)
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    m = np.array([[sim(p, t) for t in true] for p in pred], dtype=float)
    rows, cols = linear_sum_assignment(m, maximize=True)
    return [(int(r), int(c), float(m[r, c])) for r, c in zip(rows, cols) if m[r, c] > 0]


def _match_small(pred: Sequence[Sequence[float]], true: Sequence[Sequence[float]],
                 sim: Callable[[Sequence[float], Sequence[float]], float] = iou) -> list[tuple[int, int, float]]:
    """Exact maximum-total assignment by enumeration; at most 6 candidates for up to 3x3 boxes.

    Same optimum as the Hungarian algorithm, without scipy's per-call overhead
    on the small cases that make up almost every rollout.
    """
    import itertools

    m = [[sim(p, t) for t in true] for p in pred]
    if len(pred) <= len(true):
        options = ([(i, j) for i, j in enumerate(perm)] for perm in itertools.permutations(range(len(true)), len(pred)))
    else:
        options = ([(i, j) for j, i in enumerate(perm)] for perm in itertools.permutations(range(len(pred)), len(true)))
    best = max(options, key=lambda pairs: sum(m[i][j] for i, j in pairs))
    return sorted((i, j, m[i][j]) for i, j in best if m[i][j] > 0)


def matched_area_ratio(pred: Sequence[Sequence[float]], true: Sequence[Sequence[float]],
                       pairs: Sequence[tuple[int, int, float]]) -> float | None:
    """Predicted / true area summed over matched (pred_index, true_index, _) pairs; None without a pair.

    1 is a box of the true size; above 1 boxes grow (IoU pays for growth when the model is
    unsure, so a rising IoU can hide it), below 1 they shrink.
    """
    pred_area = true_area = 0.0
    for i, j, _ in pairs:  # a loop, not two generator sums: this runs on every rollout
        pred_area += box_area(pred[i])
        true_area += box_area(true[j])
    return pred_area / true_area if true_area > 0 else None


def format_boxes(boxes: Iterable[Sequence[float]], decimals: int = TRUTH_DECIMALS) -> str:
    """Serialise boxes as the compact JSON string stored in `reward_model.ground_truth`."""
    rounded = [[round(float(v), decimals) for v in b] for b in boxes]
    if all(isfinite(v) for b in rounded for v in b):  # json.dumps writes a finite float as its repr
        return "[" + ",".join("[" + ",".join(map(repr, b)) + "]" for b in rounded) + "]"
    return json.dumps(rounded, separators=(",", ":"))


def truth_json(boxes: Sequence[Box]) -> str:
    """`format_boxes` of boxes `truth_boxes_in_text` returned (rounded and finite already), without rounding again."""
    return "[" + ",".join(f"[{x1!r},{y1!r},{x2!r},{y2!r}]" for x1, y1, x2, y2 in boxes) + "]"


def box_text(box: Sequence[float]) -> str:
    """A [0, 1] box as answers write it, `[0.12, 0.34, 0.56, 0.78]`: two decimals, more when the truth has them.

    Written from the stored truth's values, so an SFT answer parses back to exactly its ground truth.
    """
    def coord(v: float) -> str:
        s = f"{round(float(v), TRUTH_DECIMALS):.{TRUTH_DECIMALS}f}".rstrip("0")
        return s + "0" * max(0, 2 - len(s.split(".")[1]))

    return "[" + ", ".join(coord(v) for v in box) + "]"


def diou(a: Sequence[float], b: Sequence[float]) -> float:
    """Distance IoU (Zheng et al. 2020): IoU - (centre distance / enclosing-box diagonal)^2, in [-1, 1]."""
    d2 = ((a[0] + a[2]) - (b[0] + b[2])) ** 2 / 4 + ((a[1] + a[3]) - (b[1] + b[3])) ** 2 / 4
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    if c2 <= 0 or not math.isfinite(c2) or not math.isfinite(d2):
        return -1.0
    return max(-1.0, min(1.0, iou(a, b) - d2 / c2))

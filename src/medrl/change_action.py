"""The change action vector `[cx, cy, scale]` of a box: the bi-temporal change agent's target.

For a box [x1, y1, x2, y2] in an image of width W and height H,

    cx = (x1 + x2) / 2 / W,   cy = (y1 + y2) / 2 / H,   scale = sqrt(box area / image area)

all in [0, 1]; for a box already in [0, 1], W = H = 1. Several boxes are one change:
their enclosing box. The converter writes this vector as the ground truth of
`medrl/change_action` rows and the change reward scores answers against it, so both
take it from here.
"""

from __future__ import annotations

import math
from typing import Sequence

from medrl.boxes import enclosing_box

Action = tuple[float, float, float]
ACTION_DECIMALS = 4  # stored vectors and the SFT answers written from them use the same digits


def action_vector(box: Sequence[float], width: float = 1.0, height: float = 1.0) -> Action:
    """[cx, cy, scale] of box [x1, y1, x2, y2] in an image of `width` x `height` (raises ValueError)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (width > 0 and height > 0) or not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"bad box {list(box)} or image size {width}x{height}")
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box {list(box)} has x2 < x1 or y2 < y1")
    area = (x2 - x1) * (y2 - y1)
    return ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, math.sqrt(area / (width * height)))


def change_action(boxes: Sequence[Sequence[float]]) -> Action | None:
    """The stored action vector of a change given as [0, 1] boxes (their enclosing box), rounded; None for none."""
    if not boxes:
        return None
    return tuple(round(v, ACTION_DECIMALS) for v in action_vector(enclosing_box(boxes)))  # type: ignore[return-value]


def action_text(action: Sequence[float]) -> str:
    """An action vector as the converter writes it (ground truth and SFT answer alike): `[0.5000, 0.2500, 0.1250]`."""
    return "[" + ", ".join(f"{float(v):.{ACTION_DECIMALS}f}" for v in action) + "]"


def action_box(action: Sequence[float]) -> tuple[float, float, float, float]:
    """The square [0, 1] box an action vector describes (side `scale`, centred at cx, cy), clipped."""
    cx, cy, s = (float(v) for v in action)
    h = s / 2
    return (max(0.0, cx - h), max(0.0, cy - h), min(1.0, cx + h), min(1.0, cy + h))

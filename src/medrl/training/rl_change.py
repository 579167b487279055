"""What an RL stage changed, row by row: two `medrl eval` runs of the same validation rows compared.

mIoU, acc@0.5 and box size are compared on the same rows (paired), so the standard error is that
of the per-row differences, not of two independent means; a change within 2 standard errors is
called noise. Box size is compared as the log of each row's matched box/true area, on the rows
matched before and after, and reported as the factor by which boxes grew or shrank.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from medrl.evaluation.metrics import row_area_ratio


@dataclass(frozen=True)
class Change:
    """One metric before and after, and the paired change over the rows both have."""

    metric: str
    before: float  # mean (box size: median box/true area) over the compared rows
    after: float
    diff: float    # mean of per-row after - before (box size: mean of ln(after / before))
    se: float      # standard error of that mean
    n: int         # rows compared


def paired(diffs: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error) of per-row differences; NaN where there are too few rows."""
    if not diffs:
        return math.nan, math.nan
    if len(diffs) < 2:
        return diffs[0], math.nan
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def verdict(diff: float, se: float) -> str:
    """"up", "down" or "noise" (within 2 standard errors, or too few rows to tell)."""
    if math.isnan(diff) or math.isnan(se):
        return "noise"
    return "up" if diff > 2 * se else "down" if diff < -2 * se else "noise"


def _iou(rec: dict) -> float:
    value = (rec.get("metrics") or {}).get("iou")
    return 0.0 if value is None or value != value else float(value)


def _has_iou(rec: dict) -> bool:
    return (rec.get("metrics") or {}).get("iou") is not None


def _acc50(rec: dict) -> float:
    return float((rec.get("metrics") or {}).get("acc@0.5", 0.0) or 0.0)


def _area(rec: dict) -> float | None:
    return row_area_ratio(rec.get("pred_boxes") or [], rec.get("true_boxes") or [])


def compare(before: Sequence[dict], after: Sequence[dict]) -> list[Change]:
    """mIoU, acc@0.5 and box/true area changes between two scored runs, rows matched by `key`."""
    b = {r["key"]: r for r in before if "key" in r}
    a = {r["key"]: r for r in after if "key" in r}
    keys = sorted(set(b) & set(a))
    # mIoU over the rows with a true box, as `medrl eval` reports it: a no-finding row has no IoU
    # (None), and counting it as 0 before and after would shrink the change by the no-finding share.
    boxed = [k for k in keys if _has_iou(b[k]) or _has_iou(a[k])]
    out = []
    for metric, value, rows in (("mIoU", _iou, boxed), ("acc@0.5", _acc50, keys)):
        xs, ys = [value(b[k]) for k in rows], [value(a[k]) for k in rows]
        diff, se = paired([y - x for x, y in zip(xs, ys)])
        out.append(Change(metric, statistics.fmean(xs) if xs else math.nan, statistics.fmean(ys) if ys else math.nan,
                          diff, se, len(rows)))
    sized = [(_area(b[k]), _area(a[k])) for k in keys]
    sized = [(x, y) for x, y in sized if x and y]  # rows with a matched box of some area, before and after
    diff, se = paired([math.log(y / x) for x, y in sized])
    out.append(Change("box/true area", statistics.median(x for x, _ in sized) if sized else math.nan,
                      statistics.median(y for _, y in sized) if sized else math.nan, diff, se, len(sized)))
    return out


def sentence(change: Change, stage: str = "RL") -> str:
    """One plain sentence whose words match the numbers (a change within 2 standard errors is noise)."""
    c = change
    if c.n == 0 or math.isnan(c.diff):
        return f"{c.metric}: no rows to compare before and after {stage}."
    word = verdict(c.diff, c.se)
    se = "n/a" if math.isnan(c.se) else f"{c.se:.3f}"
    if c.metric == "box/true area":
        factor = math.exp(c.diff)
        what = {"up": "grew", "down": "shrank", "noise": "did not change beyond noise"}[word]
        return (f"Box size {what}: median box/true area {c.before:.2f} before {stage}, {c.after:.2f} after; "
                f"boxes were {factor:.2f} times their size before {stage} (paired mean of ln ratio {c.diff:+.3f}, "
                f"standard error {se}, {c.n} rows with a matched box both times).")
    what = {"up": "rose", "down": "fell", "noise": "did not change beyond noise"}[word]
    return (f"{c.metric} {what}: {c.before:.3f} before {stage}, {c.after:.3f} after ({c.diff:+.3f}, "
            f"paired standard error {se} over {c.n} rows).")


def table(changes: Sequence[Change]) -> list[str]:
    """A markdown table of the changes."""
    lines = ["| metric | before | after | change | paired SE | rows | verdict |", "|---|---|---|---|---|---|---|"]
    for c in changes:
        digits = 2 if c.metric == "box/true area" else 3
        change = f"x{math.exp(c.diff):.2f}" if c.metric == "box/true area" and not math.isnan(c.diff) else f"{c.diff:+.3f}"
        se = "n/a" if math.isnan(c.se) else f"{c.se:.3f}"
        lines.append(f"| {c.metric} | {c.before:.{digits}f} | {c.after:.{digits}f} | {change} | {se} | {c.n} | "
                     f"{verdict(c.diff, c.se)} |")
    return lines


PICK_RULE = ("rows with a true box picked by their IoU change across RL: the largest fall, the median change "
             "and the largest rise (ties: the first in validation order)")


def pick_rows(before: Sequence[dict], after: Sequence[dict]) -> list[tuple[str, str]]:
    """[(label, key)]: the rows of largest fall, median change and largest rise of IoU (`PICK_RULE`)."""
    b = {r["key"]: r for r in before if "key" in r}
    a = {r["key"]: r for r in after if r.get("key") in b}
    if not a:
        return []
    boxed = {k: r for k, r in a.items() if _has_iou(r) or _has_iou(b[k])}
    a = boxed or a  # a no-finding row has no IoU to change: it would fill the middle of the ranking
    change = {k: _iou(a[k]) - _iou(b[k]) for k in a}
    ranked = [k for _, _, k in sorted((change[k], i, k) for i, k in enumerate(a))]  # stable on validation order
    picks = [("largest fall", ranked[0]), ("median change", ranked[(len(ranked) - 1) // 2]), ("largest rise", ranked[-1])]
    seen, out = set(), []
    for label, key in picks:
        if key not in seen:
            seen.add(key)
            out.append((f"{label} ({change[key]:+.2f})", key))
    return out

"""Report figures (matplotlib, Agg backend): reward histogram, IoU distribution, per-category bars, box overlays.

Each function takes per-model scored records ({model name: records}) and writes one
PNG atomically; it returns the path, or None when there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from medrl.atomic import atomic_path

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters or CI
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG atomically, close it, return `path`."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def reward_histogram(models: dict[str, Sequence[dict]], path: Path) -> Path | None:
    """Histogram of the reward score per model, overlaid."""
    if not any(models.values()):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = [i / 20 for i in range(21)]
    for (name, recs), color in zip(models.items(), COLORS):
        ax.hist([min(1.0, max(0.0, r["score"])) for r in recs], bins=bins, alpha=0.55, color=color,
                label=f"{name} (mean {sum(r['score'] for r in recs) / max(1, len(recs)):.3f})")
    ax.set_xlabel("reward score")
    ax.set_ylabel("rows")
    ax.set_title("Reward distribution")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def iou_distribution(models: dict[str, Sequence[dict]], path: Path) -> Path | None:
    """Histogram of per-sample matched IoU (grounding rows with true boxes), with the 0.5 line."""
    vals = {n: [r["metrics"]["iou"] for r in recs if r["task"] == "grounding" and r["metrics"].get("iou") is not None]
            for n, recs in models.items()}
    if not any(vals.values()):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = [i / 20 for i in range(21)]
    for (name, v), color in zip(vals.items(), COLORS):
        if v:
            ax.hist(v, bins=bins, alpha=0.55, color=color, label=f"{name} (mIoU {sum(v) / len(v):.3f}, n={len(v)})")
    ax.axvline(0.5, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("matched IoU per sample")
    ax.set_ylabel("rows")
    ax.set_title("IoU distribution (grounding rows with boxes)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def category_bars(summaries: dict[str, dict], path: Path, group: str = "by_category") -> Path | None:
    """Mean score (with std error bars) per category, one bar per model."""
    cats: list[str] = []
    for s in summaries.values():
        cats.extend(c for c in s[group] if c not in cats)
    if not cats:
        return None
    plt = pyplot()
    width = 0.8 / max(1, len(summaries))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cats) * max(1, len(summaries)) + 1.5), 3.8))
    for m, ((name, s), color) in enumerate(zip(summaries.items(), COLORS)):
        means = [(s[group].get(c) or {}).get("score", {}).get("mean") or 0.0 for c in cats]
        stds = [(s[group].get(c) or {}).get("score", {}).get("std") or 0.0 for c in cats]
        xs = [i + (m - (len(summaries) - 1) / 2) * width for i in range(len(cats))]
        ax.bar(xs, means, width=width, yerr=stds, capsize=3, color=color, alpha=0.8, label=name)
    ax.set_xticks(range(len(cats)))
    first = next(iter(summaries.values()))
    labels = [f"{c} (n={(first[group].get(c) or {}).get('score', {}).get('n', 0)})" for c in cats]
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("mean reward score (± std)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Reward per {group.removeprefix('by_').replace('_', ' ')}")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def box_overlay(image: Any, record: dict, path: Path, title: str = "") -> Path | None:
    """One image with true boxes (green) and predicted boxes (red, dashed), boxes given in [0, 1]."""
    if image is None:
        return None
    plt = pyplot()
    from matplotlib.patches import Rectangle

    w, h = image.size
    fig, ax = plt.subplots(figsize=(4, 4 * h / max(1, w)))
    ax.imshow(image, cmap="gray")
    for boxes, color, style in ((record.get("true_boxes", []), "lime", "-"), (record.get("pred_boxes", []), "red", "--")):
        for b in boxes:
            ax.add_patch(Rectangle((b[0] * w, b[1] * h), (b[2] - b[0]) * w, (b[3] - b[1]) * h, fill=False,
                                   edgecolor=color, linestyle=style, linewidth=2))
    ax.set_axis_off()
    ax.set_title(title or f"row {record['index']}: score {record['score']:.2f} (green truth, red model)", fontsize=8)
    return save_figure(fig, path)

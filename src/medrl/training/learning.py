"""Does training help? Validation mIoU, acc@0.5 and reward as curves over training time.

Two sources, one scoring rule (the recipe's reward: IoU of matched boxes, per row):
- a GRPO stage's own greedy validation: verl's dumps (`trainer.validation_data_dir`, one
  `{step}.jsonl` per validation, the reward's `iou` per row) placed on the time axis by verl's
  `timing_s/step` (training time: start-up and validation excluded);
- any HF folder (an SFT checkpoint, a merged arm), generated greedily and scored by `medrl eval`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medrl import jsonl
from medrl.boxes import box_area
from medrl.export.plots import pyplot, save_figure

VALIDATION_DIR = "validation"  # trainer.validation_data_dir, inside the stage folder
ACC_IOU = 0.5


@dataclass
class ValPoint:
    """Validation figures of one model at one point of training."""

    step: int
    train_s: float  # training seconds before this point (0 = the start)
    miou: float
    acc50: float  # share of rows with IoU >= 0.5
    reward: float
    n: int


def read_metrics(stage_dir: Path) -> dict[int, dict[str, Any]]:
    """Merge a stage's verl file-logger records (all attempts) into {step: metrics}."""
    steps: dict[int, dict[str, Any]] = {}
    files = sorted(stage_dir.glob("metrics.*.jsonl")) + sorted(stage_dir.glob("metrics.jsonl"))
    for path in files:
        for _, rec in jsonl.lines(path):
            steps.setdefault(int(rec["step"]), {}).update(rec.get("data", {}))
    return steps


def point(step: int, train_s: float, ious: Sequence[float], scores: Sequence[float]) -> ValPoint:
    """A ValPoint from per-row IoUs and reward scores."""
    ious = [0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in ious]
    return ValPoint(step, round(train_s, 1), sum(ious) / max(1, len(ious)),
                    sum(v >= ACC_IOU for v in ious) / max(1, len(ious)),
                    sum(scores) / max(1, len(scores)), len(ious))


def training_seconds(stage_dir: Path) -> dict[int, float]:
    """{step: training seconds at the end of that step} from verl's `timing_s/step` (step 0 -> 0)."""
    steps = read_metrics(stage_dir)
    out, total = {0: 0.0}, 0.0
    for s in sorted(steps):
        if s > 0 and "timing_s/step" in steps[s]:
            total += float(steps[s]["timing_s/step"])
            out[s] = total
    return out


def grpo_curve(stage_dir: str | Path) -> list[ValPoint]:
    """The validation curve of a GRPO stage, from verl's validation dumps and step timings."""
    stage_dir = Path(stage_dir)
    seconds = training_seconds(stage_dir)
    points = []
    for path in sorted((stage_dir / VALIDATION_DIR).glob("*.jsonl"), key=lambda p: int(p.stem)):
        recs = jsonl.read(path)
        step = int(path.stem)
        points.append(point(step, seconds.get(step, math.nan), [r.get("iou") for r in recs],
                            [float(r["score"]) for r in recs]))
    return points


def evaluate(model_dir: str | Path, val_parquet: str | Path, out_dir: str | Path, reward: Any,
             step: int = 0, train_s: float = 0.0, max_new_tokens: int = 64) -> ValPoint:
    """Greedy answers of an HF folder on the validation parquet, scored by `medrl eval`."""
    from medrl.export.eval_pipeline import RunConfig, run_eval

    cfg = RunConfig(data=str(val_parquet), out=str(out_dir), reward=reward, batch_size=32,
                    max_new_tokens=max_new_tokens, backend="transformers", progress=False, n_overlays=0)
    run_eval([str(model_dir)], cfg)
    recs = jsonl.read(Path(out_dir) / "scores.jsonl")
    return point(step, train_s, [r.get("metrics", {}).get("iou") for r in recs], [r["score"] for r in recs])


def box_area_ratio(eval_dir: str | Path) -> float:
    """Median of predicted box area / true box area over a `medrl eval` run's rows with one of each.

    IoU rewards a larger box under uncertainty (it overlaps more often), so a gain in mIoU can come
    with boxes that grow and fewer rows over IoU 0.5; this figure shows which.
    """
    ratios = []
    for rec in jsonl.read(Path(eval_dir) / "scores.jsonl"):
        pred, true = rec.get("pred_boxes") or [], rec.get("true_boxes") or []
        if len(pred) == 1 and len(true) == 1 and box_area(true[0]) > 0:
            ratios.append(box_area(pred[0]) / box_area(true[0]))
    return statistics.median(ratios) if ratios else math.nan


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(values), statistics.median(values), max(values)


def plot_curves(curves: dict[str, list[list[ValPoint]]], path: Path, title: str = "validation mIoU") -> Path:
    """Validation mIoU against training minutes: one colour per arm, one line per seed."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for (arm, runs), color in zip(curves.items(), ("tab:blue", "tab:gray", "tab:orange", "tab:green")):
        for i, run in enumerate(runs):
            pts = [p for p in run if not math.isnan(p.train_s)]
            ax.plot([p.train_s / 60 for p in pts], [p.miou for p in pts], marker="o", markersize=3, color=color,
                    alpha=0.85, label=arm if i == 0 else None)
    ax.set_xlabel("training time (minutes; start-up and validation excluded)")
    ax.set_ylabel("validation mIoU (greedy)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def validation_rows(stage_dir: str | Path, step: int) -> dict[str, float]:
    """{row key: IoU} of one of verl's validation dumps; a row is known by its prompt and truth."""
    out = {}
    for r in jsonl.read(Path(stage_dir) / VALIDATION_DIR / f"{step}.jsonl"):
        iou = r.get("iou")
        out[f"{r['input']}|{r['gts']}"] = 0.0 if iou is None or iou != iou else float(iou)
    return out


def paired_change(before: dict[str, float], after: dict[str, float]) -> tuple[float, float, int]:
    """(mean of after - before, its standard error, rows) over the rows both have."""
    keys = sorted(set(before) & set(after))
    diffs = [after[k] - before[k] for k in keys]
    if len(diffs) < 2:
        return (diffs[0] if diffs else math.nan), math.nan, len(diffs)
    return statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)), len(diffs)


def describe_change(label_before: str, label_after: str, mean: float, se: float, n: int, first: float,
                    last: float) -> str:
    """One plain sentence: did validation mIoU rise, fall, or stay within noise (2 standard errors)?"""
    if math.isnan(mean):
        return f"Validation mIoU {label_before} {first:.3f}, {label_after} {last:.3f} (no paired rows to compare)."
    verdict = ("a rise" if mean > 2 * se else "a fall" if mean < -2 * se
               else "no change beyond noise (within 2 standard errors)")
    return (f"Validation mIoU went from {first:.3f} {label_before} to {last:.3f} {label_after} "
            f"({mean:+.3f}, paired standard error {se:.3f} over {n} rows): {verdict}.")

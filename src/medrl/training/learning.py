"""Does training help? Validation mIoU, acc@0.5 and reward as curves over training time.

Two sources, one scoring rule (the recipe's reward: IoU of matched boxes, per row):
- a GRPO stage's own greedy validation: verl's dumps (`trainer.validation_data_dir`, one
  `{step}.jsonl` per validation, the reward's `iou` per row) placed on the time axis by verl's
  `timing_s/step` (training time: start-up and validation excluded);
- any HF folder (an SFT checkpoint, a merged arm), generated greedily and scored by `medrl eval`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medrl import jsonl
from medrl.evaluation.metrics import median_area_ratio
from medrl.evaluation.plots import pyplot, save_figure
from medrl.training import rl_change

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
    # Attempts in the order they ran (metrics.0, metrics.1, ..., metrics.10), the current one last.
    attempts = [p for p in stage_dir.glob("metrics.*.jsonl") if p.name.split(".")[1].isdigit()]
    files = sorted(attempts, key=lambda p: int(p.name.split(".")[1])) + sorted(stage_dir.glob("metrics.jsonl"))
    for path in files:
        for _, rec in jsonl.lines(path):
            steps.setdefault(int(rec["step"]), {}).update(rec.get("data", {}))
    return steps


def point(step: int, train_s: float, ious: Sequence[float | None], scores: Sequence[float],
          accs: Sequence[float] | None = None) -> ValPoint:
    """A ValPoint from per-row IoUs, reward scores and (optionally) acc@0.5 hits.

    A NaN IoU counts as 0; a None IoU (a row whose truth has no box) is left out of the mIoU, as
    `medrl eval` leaves it out. Without `accs`, acc@0.5 is the share of rows with IoU >= 0.5.
    """
    n = len(scores) if accs is None else len(accs)
    if accs is None:
        accs = [float(v is not None and v == v and v >= ACC_IOU) for v in ious]
    boxed = [0.0 if isinstance(v, float) and math.isnan(v) else float(v) for v in ious if v is not None]
    return ValPoint(step, round(train_s, 1), sum(boxed) / max(1, len(boxed)), sum(accs) / max(1, len(accs)),
                    sum(scores) / max(1, len(scores)), max(n, len(ious)))


def eval_figures(output: str, truth: Any) -> tuple[float | None, float]:
    """(IoU or None when the truth has no box, acc@0.5) of one answer by `medrl eval`'s rules, whatever reward trained it."""
    from medrl.evaluation.metrics import grounding_metrics
    from medrl.rewards.iou import score_details

    _, parse = score_details(None, output or "", truth)
    m = grounding_metrics(parse.pred, parse.true, parse.no_finding)
    return m["iou"], m["acc@0.5"]


def training_seconds(stage_dir: Path) -> dict[int, float]:
    """{step: training seconds at the end of that step} from verl's `timing_s/step` (step 0 -> 0)."""
    steps = read_metrics(stage_dir)
    out, total = {0: 0.0}, 0.0
    for s in sorted(steps):
        if s > 0 and "timing_s/step" in steps[s]:
            total += float(steps[s]["timing_s/step"])
            out[s] = total
    return out


def grpo_curve(stage_dir: str | Path, rescore: bool = False) -> list[ValPoint]:
    """The validation curve of a GRPO stage, from verl's validation dumps and step timings.

    By default each row's IoU is the `iou` key the reward wrote (the shipped spec's); with
    `rescore`, IoU and acc@0.5 are recomputed from the dumped answer and truth by `medrl eval`'s
    rules (`eval_figures`), so arms trained on different rewards, and rows without a finding, are
    measured alike.
    """
    stage_dir = Path(stage_dir)
    seconds = training_seconds(stage_dir)
    points = []
    for path in sorted((stage_dir / VALIDATION_DIR).glob("*.jsonl"), key=lambda p: int(p.stem)):
        recs = jsonl.read(path)
        step = int(path.stem)
        scores = [float(r["score"]) for r in recs]
        if rescore:
            figures = [eval_figures(r.get("output", ""), r.get("gts")) for r in recs]
            points.append(point(step, seconds.get(step, math.nan), [f[0] for f in figures], scores,
                                [f[1] for f in figures]))
        else:
            points.append(point(step, seconds.get(step, math.nan), [r.get("iou") for r in recs], scores))
    return points


def evaluate(model_dir: str | Path, val_parquet: str | Path, out_dir: str | Path, reward: Any,
             step: int = 0, train_s: float = 0.0, max_new_tokens: int = 80) -> ValPoint:
    """Greedy answers of an HF folder on the validation parquet, scored by `medrl eval`.

    80 tokens: a three-box answer of the VinDr-like mix is up to 66 (64 cut its last box).
    """
    from medrl.evaluation.eval_pipeline import RunConfig, run_eval

    cfg = RunConfig(data=str(val_parquet), out=str(out_dir), reward=reward, batch_size=32,
                    max_new_tokens=max_new_tokens, backend="transformers", progress=False, n_overlays=0)
    run_eval([str(model_dir)], cfg)
    recs = jsonl.read(Path(out_dir) / "scores.jsonl")
    return point(step, train_s, [r.get("metrics", {}).get("iou") for r in recs], [r["score"] for r in recs],
                 [float(r.get("metrics", {}).get("acc@0.5", 0.0)) for r in recs])


def box_area_ratio(eval_dir: str | Path) -> float:
    """Median box/true area over a `medrl eval` run's rows with matched boxes (`medrl.evaluation.metrics.median_area_ratio`)."""
    return median_area_ratio(jsonl.read(Path(eval_dir) / "scores.jsonl"))


COLOURS = ("tab:blue", "tab:gray", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
           "tab:olive", "tab:cyan")
METRIC_LABELS = {"miou": "validation mIoU (greedy)", "acc50": "validation acc@0.5 (greedy)"}


def plot_curves(curves: dict[str, list[list[ValPoint]]], path: Path, title: str = "validation mIoU",
                metric: str = "miou") -> Path:
    """Validation mIoU (or `metric="acc50"`) against training minutes: one colour per arm, one line per seed."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for k, (arm, runs) in enumerate(curves.items()):
        for i, run in enumerate(runs):
            pts = [p for p in run if not math.isnan(p.train_s)]
            ax.plot([p.train_s / 60 for p in pts], [getattr(p, metric) for p in pts], marker="o", markersize=3,
                    color=COLOURS[k % len(COLOURS)], alpha=0.85, label=arm if i == 0 else None)
    ax.set_xlabel("training time (minutes; start-up and validation excluded)")
    ax.set_ylabel(METRIC_LABELS[metric])
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
    mean, se = rl_change.paired([after[k] - before[k] for k in keys])
    return mean, se, len(keys)


def describe_change(label_before: str, label_after: str, mean: float, se: float, n: int, first: float,
                    last: float) -> str:
    """One plain sentence: did validation mIoU rise, fall, or stay within noise (2 standard errors)?"""
    if math.isnan(mean):
        return f"Validation mIoU {label_before} {first:.3f}, {label_after} {last:.3f} (no paired rows to compare)."
    verdict = {"up": "a rise", "down": "a fall",
               "noise": "no change beyond noise (within 2 standard errors)"}[rl_change.verdict(mean, se)]
    return (f"Validation mIoU went from {first:.3f} {label_before} to {last:.3f} {label_after} "
            f"({mean:+.3f}, paired standard error {se:.3f} over {n} rows): {verdict}.")

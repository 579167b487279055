"""Evaluation: generate answers, score them with the training reward spec, add task metrics, summarise.

Scoring goes through `medrl.rewards.compose` (the code verl calls in training), so
an evaluation score is a training reward. Task metrics reuse the rewards' own
parsing (`answer_section`, `predicted_boxes`, `truth_boxes`) and add what a reward
does not give: grounding IoU / acc@0.5 / mAP@0.5 and report BLEU-1..4 / ROUGE-L.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medrl.atomic import atomic_open
from medrl.export import metrics
from medrl.export.rows import EvalRow

TASK_METRICS = {
    "grounding": ("iou", "region_iou", "acc@0.5", "ap@0.5"),
    "report": ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"),
    "vqa": ("acc",),
}
_TASK_OF_REWARD = {"iou": "grounding", "enhanced": "grounding", "bleu": "report", "vqa": "vqa"}


@dataclass(frozen=True)
class EvalOptions:
    """What scoring needs besides the rows and answers."""

    reward: Any = None  # reward name, spec path, JSON/YAML text or dict (None: medrl's default routes)
    box_convention: str | None = None  # None: the iou reward's setting in the spec, else "auto"
    credit_no_finding: bool = False


def _route_info(data_source: str, spec: Any) -> tuple[list[str], dict]:
    """(reward names of the row's route, iou kwargs the spec gives that route)."""
    from medrl.rewards import compose

    route = compose.find_route(data_source, spec)
    if route is None:
        return [], {}
    names = [t.name for t in route.terms]
    iou_kw: dict = dict(spec.kwargs.get("iou", {}))
    for t in route.terms:
        if t.name in ("iou", "enhanced"):
            iou_kw.update(t.kwargs)
    return names, iou_kw


def task_of(row: EvalRow, reward_names: Sequence[str]) -> str:
    """grounding | report | vqa | other: the row's `ability`, else what its route rewards."""
    if row.ability in TASK_METRICS:
        return row.ability
    for name in reward_names:
        if name in _TASK_OF_REWARD:
            return _TASK_OF_REWARD[name]
    return "other"


def score_rows(rows: Sequence[EvalRow], answers: dict[str, str], opts: EvalOptions) -> list[dict]:
    """One scored record per row: reward keys, task metrics, parsed boxes."""
    from medrl.rewards import compose
    from medrl.rewards.answer import answer_section, states_no_finding
    from medrl.rewards.iou import image_geometry, predicted_boxes, truth_boxes

    spec = compose.load_spec(opts.reward)
    missing = sorted({r.data_source for r in rows if not compose.has_route(r.data_source, spec)})
    if missing:
        raise ValueError(f"the reward spec has no route for data_source(s) {missing}; "
                         f"its routes: {compose.route_names(spec)}")
    texts = [answers[r.key] for r in rows]
    rewards = compose.compute_score_batch([r.data_source for r in rows], texts, [r.ground_truth for r in rows],
                                          [dict(r.extra_info) for r in rows], spec=spec)
    out = []
    for row, text, reward in zip(rows, texts, rewards):
        names, iou_kw = _route_info(row.data_source, spec)
        task = task_of(row, names)
        answer, _ = answer_section(text)
        rec: dict[str, Any] = {
            "key": row.key, "index": row.index, "data_source": row.data_source, "category": row.category,
            "task": task, "output": text, "answer": answer, "ground_truth": _gt_text(row.ground_truth),
            "score": float(reward["score"]), "reward": {k: float(v) for k, v in reward.items()},
            "image": 0 if row.images else None,
        }
        if task == "grounding":
            conv = opts.box_convention or iou_kw.get("box_convention", "auto")
            width, height, min_px, max_px = image_geometry(row.extra_info, iou_kw)
            pred, _unplaced = predicted_boxes(answer, conv, width, height, min_px, max_px)
            true = truth_boxes(row.ground_truth)
            no_finding = not pred and states_no_finding(answer)
            rec.update(pred_boxes=[list(b) for b in pred], true_boxes=[list(b) for b in true],
                       no_finding=no_finding, box_convention=conv,
                       metrics=metrics.grounding_metrics(pred, true, no_finding, opts.credit_no_finding))
        elif task == "report":
            rec["metrics"] = metrics.report_metrics(answer, rec["ground_truth"])
        elif task == "vqa":
            rec["metrics"] = {"acc": float(reward.get("vqa/acc", reward.get("vqa", reward["score"])))}
        else:
            rec["metrics"] = {}
        out.append(rec)
    return out


def _gt_text(gt: Any) -> str:
    if isinstance(gt, str):
        return gt
    if hasattr(gt, "tolist"):
        gt = gt.tolist()
    return json.dumps(gt, default=str)


def group_summary(records: Sequence[dict]) -> dict:
    """Statistics of the score and every task metric over `records` (mAP@0.5 = mean of ap@0.5)."""
    out = {"score": metrics.summary_stats([r["score"] for r in records])}
    names: list[str] = []
    for r in records:
        for k in r.get("metrics", {}):
            if k not in names:
                names.append(k)
    for k in names:
        out[k] = metrics.summary_stats([r["metrics"].get(k) for r in records])
    if "ap@0.5" in out:
        out["mAP@0.5"] = out["ap@0.5"]["mean"]
    return out


def summarise(records: Sequence[dict], n_examples: int = 3) -> dict:
    """Overall, per-data-source, per-category and per-task statistics, with the worst and best examples."""
    def by(key: str) -> dict:
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(str(r[key]), []).append(r)
        return {k: group_summary(v) for k, v in sorted(groups.items())}

    ranked = sorted(records, key=lambda r: (r["score"], r["index"]))
    return {
        "overall": group_summary(records),
        "by_data_source": by("data_source"),
        "by_category": by("category"),
        "by_task": by("task"),
        "worst": [_example(r) for r in ranked[:n_examples]],
        "best": [_example(r) for r in reversed(ranked[-n_examples:])] if records else [],
    }


def _example(r: dict) -> dict:
    keep = ("key", "index", "data_source", "category", "task", "score", "answer", "ground_truth", "pred_boxes",
            "true_boxes", "no_finding", "metrics")
    ex = {k: r[k] for k in keep if k in r}
    ex["answer"] = ex.get("answer", "")[:600]
    return ex


def paired_comparison(a: Sequence[dict], b: Sequence[dict]) -> dict:
    """Row-by-row comparison of two models' scores on the same rows (B minus A)."""
    sa = {r["key"]: r["score"] for r in a}
    diffs = [r["score"] - sa[r["key"]] for r in b if r["key"] in sa]
    return {"n": len(diffs), "difference": metrics.summary_stats(diffs),
            "b_better": sum(d > 1e-12 for d in diffs), "a_better": sum(d < -1e-12 for d in diffs),
            "ties": sum(abs(d) <= 1e-12 for d in diffs)}


def write_scores(path: str | Path, records: Sequence[dict]) -> None:
    """Write per-row scored records as JSONL, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")

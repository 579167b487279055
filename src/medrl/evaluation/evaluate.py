"""Evaluation: score generated answers with the training reward spec, add task metrics, summarise.

One scoring path: every row goes through `medrl.rewards.compose` (the code verl calls in
training) once, and grounding IoU / acc@0.5 / mAP@0.5 are computed from the boxes that
this very call read (the rewards' `score_details`), so `score` and the box metrics can
never use two readings or two box conventions. `--box-convention` reaches the rewards
through the spec (`compose.with_reward_kwargs`). Report BLEU-1..4 / ROUGE-L and the findings
F1 (`medrl.rewards.findings`, per row and micro/macro over rows) are added from the answer
section the rewards read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medrl.atomic import atomic_open
from medrl.evaluation import metrics
from medrl.evaluation.rows import EvalRow

TASK_METRICS = {
    "grounding": ("iou", "region_iou", "acc@0.5", "ap@0.5", "area_ratio"),
    "report": ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "findings_f1"),
    "vqa": ("acc",),
}


@dataclass(frozen=True)
class EvalOptions:
    """What scoring needs besides the rows and answers."""

    reward: Any = None  # reward name, spec path, JSON/YAML text or dict (None: medrl's default routes)
    box_convention: str | None = None  # given to every reward that reads boxes, over the spec; None: the spec's
    credit_no_finding: bool = False


def task_of(row: EvalRow, reward_names: Sequence[str]) -> str:
    """grounding | report | vqa | other: the row's task by the one rule (`medrl.rewards.tasks`)."""
    from medrl.rewards.tasks import row_task

    return row_task(row.ability, row.data_source, reward_names, TASK_METRICS) or "other"


def score_rows(rows: Sequence[EvalRow], answers: dict[str, str], opts: EvalOptions) -> list[dict]:
    """One scored record per row: reward keys, task metrics, the boxes the reward read."""
    from medrl.rewards import compose, findings, iou
    from medrl.rewards.answer import answer_section

    spec = compose.load_spec(opts.reward)
    if opts.box_convention:
        spec = compose.with_reward_kwargs(spec, box_convention=opts.box_convention)
    missing = sorted({r.data_source for r in rows if not compose.has_route(r.data_source, spec)})
    if missing:
        raise ValueError(f"the reward spec has no route for data_source(s) {missing}; "
                         f"its routes: {compose.route_names(spec)}")
    texts = [answers[r.key] for r in rows]
    scored = compose.score_batch_details([r.data_source for r in rows], texts, [r.ground_truth for r in rows],
                                         [dict(r.extra_info) for r in rows], spec=spec)
    out = []
    for row, text, (reward, read) in zip(rows, texts, scored):
        names = [t.name for t in compose.route_for(row.data_source, spec).terms]
        task = task_of(row, names)
        answer, _ = answer_section(text)
        rec: dict[str, Any] = {
            "key": row.key, "index": row.index, "data_source": row.data_source, "category": row.category,
            "task": task, "output": text, "answer": answer, "ground_truth": _gt_text(row.ground_truth),
            "score": float(reward["score"]),
            # NaN keys belong to rewards this row's route does not use: left out of the record.
            "reward": {k: float(v) for k, v in reward.items() if v == v},
            "image": 0 if row.images else None,
        }
        if task == "grounding":
            parse = next((d for d in read.values() if isinstance(d, iou.GroundingParse)), None)
            if parse is None:  # the route scores boxes some other way (a judge): read them as the IoU reward does
                _, parse = iou.score_details(row.data_source, text, row.ground_truth, dict(row.extra_info),
                                             **compose.reward_kwargs(spec, "iou", row.data_source))
            rec.update(pred_boxes=[list(b) for b in parse.pred], true_boxes=[list(b) for b in parse.true],
                       no_finding=parse.no_finding, box_convention=parse.convention,
                       metrics=metrics.grounding_metrics(parse.pred, parse.true, parse.no_finding,
                                                         opts.credit_no_finding))
        elif task == "report":
            rec["metrics"] = metrics.report_metrics(answer, rec["ground_truth"])
            rec["findings"] = findings.report_findings(answer, rec["ground_truth"])  # statuses, for micro/macro F1
            rec["metrics"]["findings_f1"] = rec["findings"]["f1"]
        elif task == "vqa":
            rec["metrics"] = {"acc": float(reward.get("vqa/acc", reward["score"]))}
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
    read = [r["findings"] for r in records if "findings" in r]
    if read:  # corpus figures, as CheXbert F1 is reported: micro over all pairs, macro over observations
        from medrl.rewards.findings import corpus_f1_of

        out["findings_f1_micro"], out["findings_f1_macro"] = corpus_f1_of(read)
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

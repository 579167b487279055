"""`medrl merge`: a verl FSDP checkpoint -> a verified HuggingFace folder."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the `merge` sub-command."""
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
    from medrl.evaluation.rows import RowError, read_rows

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

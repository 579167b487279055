"""The converter options every `medrl prepare` command and seed script shares: arguments, options, summary."""

from __future__ import annotations

import argparse
import json

from medrl.data.records import TURN_POLICIES


def add_convert_arguments(p: argparse.ArgumentParser, with_inputs: bool = True) -> None:
    """The options every converter shares (also used by the seed-compatible scripts)."""
    if with_inputs:
        p.add_argument("inputs", nargs="+", help="LLaVA JSON array, JSONL or LLaVA-format parquet file(s)")
    p.add_argument("--out", "--output_dir", "--local_dir", dest="output_dir", metavar="DIR", required=True,
                   help="folder for train.parquet/val.parquet (or <split_name>.parquet), rejects and summary")
    p.add_argument("--image_root", default=None,
                   help="folder that relative image paths resolve against (default: the input file's folder)")
    p.add_argument("--input_format", default="auto", help="auto, json, jsonl or parquet")
    g = p.add_argument_group("selection")
    g.add_argument("--dataset_filter", nargs="+", default=None, metavar="NAME",
                   help="keep only records whose dataset tag is one of these (e.g. vindr-cxr vindr-cxr-mono)")
    g.add_argument("--dataset_key", default=None, help="record key of the dataset tag (default: dataset, "
                   "dataset_name, source or data_source, the first present)")
    g.add_argument("--limit", type=int, default=None, help="convert at most N records")
    g.add_argument("--shuffle", action="store_true",
                   help="with --limit: a seeded random sample of N records (two passes); also shuffles the "
                        "output order within a bounded buffer")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--shuffle_buffer", type=int, default=256, help="records held for the output-order shuffle")
    g.add_argument("--val_fraction", type=float, default=0.0,
                   help="share of records (by a hash of their id: stable across runs) written to val.parquet")
    g.add_argument("--split_name", default=None, help="write all rows to <split_name>.parquet (no split)")
    r = p.add_argument_group("rows")
    r.add_argument("--turns", choices=TURN_POLICIES, default="expand",
                   help="multi-turn records: expand = one row per gpt turn with earlier turns as context "
                        "(default); last = the last turn only, earlier ones as context; first = the first "
                        "turn only (later turns counted as dropped)")
    r.add_argument("--instruction", action=argparse.BooleanOptionalAction, default=True,
                   help="append the <think>/<answer> (and box format) instruction to each question")
    r.add_argument("--data_source", default=None, help="data_source of every row (default medrl/<task>)")
    r.add_argument("--vqa_max_words", type=int, default=10, help="vqa: reject longer answers (0: no limit)")
    r.add_argument("--sft", action="store_true",
                   help="also write sft_train.parquet/sft_val.parquet (messages + images) for verl's SFT trainer")
    r.add_argument("--sft_think", default=None, help="text inside <think> of SFT targets (default per task)")
    i = p.add_argument_group("images")
    i.add_argument("--image_mode", choices=("embed", "ref"), default="embed",
                   help='embed: {"bytes"} in the parquet (default); ref: {"image": "file:///abs", min/max pixels}')
    i.add_argument("--max_pixels", type=int, default=None,
                   help="embed: downscale images above this many pixels; ref: the max_pixels written")
    i.add_argument("--min_pixels", type=int, default=None, help="ref: the min_pixels written (default 3136)")
    i.add_argument("--verify_images", action=argparse.BooleanOptionalAction, default=True,
                   help="decode every image to catch corrupt files (ref mode can skip it for speed)")
    ln = p.add_argument_group("prompt length")
    ln.add_argument("--max_prompt_chars", type=int, default=None, help="cheap cut-off on prompt characters")
    ln.add_argument("--processor", default=None, help="local model folder whose processor counts tokens exactly")
    ln.add_argument("--max_prompt_tokens", type=int, default=None,
                    help="with --processor: reject prompts longer than this (image tokens included)")
    o = p.add_argument_group("run")
    o.add_argument("--row_group_size", "--batch_size", dest="row_group_size", type=int, default=512,
                   help="rows per parquet row group")
    # One process by default (least memory, nothing forked). Workers read the input themselves and
    # each build every Nth chunk (medrl.data.shards): on 2 cores, --workers 2 converted 100,000
    # records 1.3x (embed) to 1.7x (ref) as fast as one process (docs/benchmarks.md, issue 22).
    o.add_argument("--workers", type=int, default=1,
                   help="worker processes that read the input and build rows (default 1: one process; "
                        "2 on a 2-core machine is faster)")
    o.add_argument("--strict", action="store_true", help="any rejected record fails the run (no parquet written)")
    o.add_argument("--no_progress", action="store_true", help="no progress bar")
    o.add_argument("--json", action="store_true", help="print the summary as JSON")


def options_from_args(args: argparse.Namespace, task: str):
    """Build ConvertOptions from parsed arguments."""
    from medrl.boxes import QWEN_MIN_PIXELS
    from medrl.data.convert import ConvertOptions
    from medrl.data.images import ImageOptions
    from medrl.data.length import LengthOptions
    from medrl.data.records import RecordOptions

    if args.max_prompt_tokens and not args.processor:
        raise SystemExit("--max-prompt-tokens needs --processor PATH (the model folder whose processor counts)")
    if not args.verify_images and args.image_mode == "embed" and args.max_pixels:
        raise SystemExit("--max-pixels in embed mode decodes every image; drop --no-verify-images")
    images = ImageOptions(image_root=args.image_root, mode=args.image_mode, max_pixels=args.max_pixels,
                          min_pixels=args.min_pixels or QWEN_MIN_PIXELS, verify=args.verify_images)
    record = RecordOptions(task=task, turns=args.turns, instruction=args.instruction, data_source=args.data_source,
                           dataset_key=args.dataset_key, vqa_max_words=args.vqa_max_words, sft=args.sft,
                           sft_think=args.sft_think, images=images)
    length = LengthOptions(max_prompt_chars=args.max_prompt_chars, processor=args.processor,
                           max_prompt_tokens=args.max_prompt_tokens)
    return ConvertOptions(inputs=list(args.inputs), output_dir=args.output_dir, record=record, length=length,
                          input_format=args.input_format, dataset_filter=args.dataset_filter, limit=args.limit,
                          shuffle=args.shuffle, seed=args.seed, shuffle_buffer=args.shuffle_buffer,
                          val_fraction=args.val_fraction, split_name=args.split_name,
                          row_group_size=args.row_group_size, workers=args.workers, strict=args.strict,
                          progress=not args.no_progress)


def print_summary(summary: dict, as_json: bool = False) -> None:
    """Human summary of a conversion (rejects said loudly)."""
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    t = Table(title=f"medrl prepare {summary['task']}", show_header=False)
    t.add_row("records read", str(summary["records_read"]))
    t.add_row("records converted", str(summary["records_converted"]))
    for k, v in summary["records_filtered"].items():
        t.add_row(f"filtered: {k}", str(v))
    for split, n in summary["rows_written"].items():
        t.add_row(f"rows -> {summary['outputs'][split]}", str(n))
    for split, n in summary["sft_rows_written"].items():
        t.add_row(f"SFT rows -> {summary['sft_outputs'][split]}", str(n))
    for k, v in summary["turns_dropped"].items():
        t.add_row(f"turns dropped: {k}", str(v))
    t.add_row("time", f"{summary['seconds']:.1f} s ({summary['records_per_s']} records/s)")
    console.print(t)
    if summary["rejected"]:
        rt = Table(title=f"REJECTED {summary['rejected']} record(s)", title_style="bold red")
        rt.add_column("reason")
        rt.add_column("count", justify="right")
        for reason, n in summary["rejects_by_reason"].items():
            rt.add_row(reason, str(n))
        console.print(rt)
        console.print(f"[bold red]{summary['rejected']} rejected[/]: see {summary['rejects_file']}")
    if summary.get("strict_failure"):
        console.print(f"[bold red]{summary['strict_failure']}[/]")
    console.print(f"summary: {summary['summary_file']}")

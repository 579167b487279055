"""`medrl prepare unimedvl | mecovqa | change | mix | format-samples`: the seed systems' data formats.

Wired by `medrl.data.commands.register` with one call on its `prepare` sub-parsers:
``register_formats(psub)``. `python -m medrl.data.prepare_formats OUT` writes the samples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medrl.data.prepare_args import add_convert_arguments, options_from_args, print_summary
from medrl.data.records import TASKS

HELP = {
    "unimedvl": "UniMedVL JSONL (main_task_type, input_img/output_img, message) -> verl parquet",
    "mecovqa": "MeCoVQA Complex/Region/Grounding JSON + SA-Med2D images and masks -> verl parquet",
    "change": "bi-temporal change pairs (load_from_disk folder: image, image2, caption, bbox) -> two-image rows",
    "mix": "a UniMedVL-style mixing YAML (groups, weight, num_used_data, shuffle) -> one mixed parquet",
    "format-samples": "write the generated UniMedVL, MeCoVQA and change samples",
}


def run_unimedvl(args: argparse.Namespace) -> int:
    """`medrl prepare unimedvl`."""
    from medrl.data.unimedvl import prepare_unimedvl

    summary = prepare_unimedvl(options_from_args(args, args.task))
    print_summary(summary, as_json=args.json)
    return 1 if summary.get("strict_failure") else 0


def run_mecovqa(args: argparse.Namespace) -> int:
    """`medrl prepare mecovqa`."""
    from medrl.data.mecovqa import MecoOptions, prepare_mecovqa

    meco = MecoOptions(kind=args.kind, min_area=args.min_area, mask_root=args.mask_root,
                       complex_task=args.complex_task, region_task=args.region_task)
    summary = prepare_mecovqa(options_from_args(args, "grounding"), meco)
    print_summary(summary, as_json=args.json)
    return 1 if summary.get("strict_failure") else 0


def run_change(args: argparse.Namespace) -> int:
    """`medrl prepare change`."""
    from medrl.data.change import ChangeOptions, prepare_change

    summaries = prepare_change(options_from_args(args, "grounding"), ChangeOptions(tuple(args.tasks)))
    for s in summaries:
        print_summary(s, as_json=args.json)
    return 1 if any(s.get("strict_failure") for s in summaries) else 0


def run_mix(args: argparse.Namespace) -> int:
    """`medrl prepare mix`."""
    import json

    from medrl.data.length import LengthOptions
    from medrl.data.mixing import MixError, mix
    from medrl.data.records import RecordOptions

    if args.max_prompt_tokens and not args.processor:
        raise SystemExit("--max-prompt-tokens needs --processor PATH")
    try:
        summary = mix(args.config, args.output, total=args.total, seed=args.seed,
                      record=RecordOptions(instruction=args.instruction),
                      length=LengthOptions(max_prompt_chars=args.max_prompt_chars, processor=args.processor,
                                           max_prompt_tokens=args.max_prompt_tokens),
                      image_mode=args.image_mode, allow_repeat=not args.no_repeat, progress=not args.no_progress)
    except MixError as exc:
        print(f"medrl prepare mix: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_proportions(summary)
    return 0


def print_proportions(summary: dict) -> None:
    """Print the realised proportions as a table."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"medrl prepare mix -> {summary['output']} ({summary['rows']} rows, seed {summary['seed']})")
    for col in ("group", "format", "weight", "target", "lines", "rejected", "available", "taken", "repeated",
                "realised"):
        t.add_column(col, justify="left" if col in ("group", "format") else "right")
    for r in summary["groups"]:
        t.add_row(r["group"], r["format"], f"{r['weight']:g}", f"{100 * r['target_share']:.1f}%", str(r["lines"]),
                  str(r["rejected"]), str(r["rows_available"]), str(r["rows_taken"]), str(r["repeated_rows"]),
                  f"{100 * r['realised_share']:.1f}%")
    console = Console(width=max(Console().width, 120))  # keep the columns readable when piped
    console.print(t)
    if summary["rejected"]:
        console.print(f"[bold red]{summary['rejected']} line(s) rejected[/]: "
                      + ", ".join(f"{k}: {v}" for k, v in summary["rejects_by_reason"].items())
                      + f" (see {summary['rejects_file']})")


def write_samples(out: str | Path) -> dict[str, Path]:
    """Generate every format's sample under `out` (unimedvl/, mecovqa/, change/)."""
    from medrl.data import change_sample, mecovqa_sample, unimedvl_sample

    out = Path(out)
    return {"unimedvl": unimedvl_sample.write_sample(out / "unimedvl"),
            "mecovqa": mecovqa_sample.write_sample(out / "mecovqa")[0].parent,
            "change": change_sample.write_sample(out / "change")}


def run_samples(args: argparse.Namespace) -> int:
    """`medrl prepare format-samples`."""
    for name, path in write_samples(args.out).items():
        print(f"{name}: {path}")
    return 0


def register_formats(prepare_subparsers) -> None:
    """Add the seed formats' sub-commands to `medrl prepare`."""
    sp = prepare_subparsers.add_parser("unimedvl", help=HELP["unimedvl"], description=HELP["unimedvl"])
    add_convert_arguments(sp)
    sp.add_argument("--task", choices=TASKS, default="report",
                    help="how answers are scored; filter rows of one kind with --dataset-filter <main_task_type>")
    sp.set_defaults(func=run_unimedvl)

    sp = prepare_subparsers.add_parser("mecovqa", help=HELP["mecovqa"], description=HELP["mecovqa"])
    add_convert_arguments(sp)
    sp.add_argument("--kind", choices=("auto", "complex", "region", "grounding"), default="auto",
                    help="record kind (auto: <mask> in the answer = grounding, <region> in the question = region)")
    sp.add_argument("--min_area", type=int, default=16,
                    help="grounding/region masks: connected regions with fewer pixels are ignored")
    sp.add_argument("--mask_root", default=None, help="folder mask paths resolve against (default: --image-root)")
    sp.add_argument("--complex_task", choices=("report", "vqa"), default="report")
    sp.add_argument("--region_task", choices=("report", "vqa"), default="report")
    sp.set_defaults(func=run_mecovqa)

    sp = prepare_subparsers.add_parser("change", help=HELP["change"], description=HELP["change"])
    add_convert_arguments(sp)
    sp.add_argument("--tasks", nargs="+", choices=("grounding", "action", "caption"), default=["grounding", "caption"],
                    help="rows per pair: grounding (box, IoU), action ([cx, cy, scale], change reward), caption")
    sp.set_defaults(func=run_change)

    sp = prepare_subparsers.add_parser("mix", help=HELP["mix"], description=HELP["mix"])
    sp.add_argument("config", help="mix YAML (UniMedVL shape; see medrl.data.mixing)")
    sp.add_argument("--out", "--output", dest="output", metavar="FILE", required=True, help="the mixed parquet to write")
    sp.add_argument("--total", type=int, default=None, help="rows in the mix (default: the largest without repeats)")
    sp.add_argument("--seed", type=int, default=None, help="interleaving seed (default: YAML seed or shuffle_seed)")
    sp.add_argument("--no_repeat", action="store_true", help="fail instead of repeating a group's rows")
    sp.add_argument("--image_mode", choices=("embed", "ref"), default="embed")
    sp.add_argument("--instruction", action=argparse.BooleanOptionalAction, default=True)
    sp.add_argument("--max_prompt_chars", type=int, default=None)
    sp.add_argument("--processor", default=None)
    sp.add_argument("--max_prompt_tokens", type=int, default=None)
    sp.add_argument("--no_progress", action="store_true")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=run_mix)

    sp = prepare_subparsers.add_parser("format-samples", help=HELP["format-samples"],
                                       description=HELP["format-samples"])
    sp.add_argument("--out", default="examples")
    sp.set_defaults(func=run_samples)


if __name__ == "__main__":
    for name, path in write_samples(sys.argv[1] if len(sys.argv) > 1 else "examples").items():
        print(f"{name}: {path}")

"""`medrl prepare {grounding,report,vqa,convert,sample}` and `medrl check`; the other formats come from `prepare_formats`."""

from __future__ import annotations

import argparse
import sys

from medrl.data.prepare_args import add_convert_arguments, options_from_args, print_summary
from medrl.data.records import TASKS

PREPARE_HELP = {
    "grounding": "LLaVA records with boxes in the answers -> verl parquet (ground truth: [0,1] boxes as JSON)",
    "report": "LLaVA records with report answers -> verl parquet (ground truth: the reference text)",
    "vqa": "LLaVA records with short closed-form answers -> verl parquet",
    "convert": "any input format (JSON, JSONL, LLaVA parquet) and task (--task) -> verl parquet",
}


def run_prepare(args: argparse.Namespace) -> int:
    """Run one conversion from parsed arguments; exit code 1 on a --strict failure."""
    from medrl.data.convert import convert

    task = getattr(args, "task", None) or args.prepare_task
    summary = convert(options_from_args(args, task))
    print_summary(summary, as_json=args.json)
    return 1 if summary.get("strict_failure") else 0


def run_sample(args: argparse.Namespace) -> int:
    """Write the generated sample (images + sample.json)."""
    from medrl.data.sample import write_grounding_set, write_sample

    if args.grounding:
        path = write_grounding_set(args.out, n=args.n, seed=args.seed, answer=args.answer, mix=args.mix)
    else:
        path = write_sample(args.out, n=args.n, seed=args.seed)
    print(f"wrote {args.n} records to {path}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Preflight a verl parquet; non-zero exit on any problem."""
    from medrl.data.check import check_file, print_report

    if args.reward_spec:
        from medrl.rewards.compose import load_spec

        try:  # a broken spec or reward file is one line naming it, before any row is read
            load_spec(args.reward_spec)
        except ValueError as exc:
            print(f"medrl check: --reward: {exc}", file=sys.stderr)
            return 2
    fast = {} if args.full else {"verify": args.verify, "margin": args.margin, "seed": args.seed,
                                 "workers": args.workers}
    report = check_file(args.data, processor=args.processor, max_prompt_length=args.max_prompt_length,
                        image_key=args.image_key, prompt_key=args.prompt_key, show=args.show,
                        reward_spec=args.reward_spec, progress=not args.no_progress, full=args.full, **fast)
    print_report(report, as_json=args.json)
    return 1 if report["problems"] else 0


def register(subparsers) -> None:
    """Add `prepare` and `check` to the medrl command."""
    prep = subparsers.add_parser("prepare", help="convert LLaVA data to verl parquet",
                                 description="Convert LLaVA-format instruction data into verl's RL parquet.")
    psub = prep.add_subparsers(dest="prepare_task", metavar="TASK", required=True)
    for task in ("grounding", "report", "vqa", "convert"):
        sp = psub.add_parser(task, help=PREPARE_HELP[task], description=PREPARE_HELP[task])
        add_convert_arguments(sp)
        if task == "convert":
            sp.add_argument("--task", choices=TASKS, default="grounding")
        sp.set_defaults(func=run_prepare)
    sp = psub.add_parser("sample", help="generate RadVLM-like look-alike data (images + LLaVA JSON)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--n", type=int, default=64)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--grounding", action="store_true",
                    help="grounding records only (writes grounding.json): a set to learn on; see --mix")
    sp.add_argument("--answer", choices=("short", "radvlm"), default="short",
                    help="--grounding answers: the box alone (short) or RadVLM's sentence around it")
    sp.add_argument("--mix", choices=("one", "vindr"), default="one",
                    help="--grounding findings per image: one each, or VinDr-like (about half none, the others 1-3)")
    sp.set_defaults(func=run_sample)
    from medrl.data.prepare_formats import register_formats  # UniMedVL, MeCoVQA, change pairs, mixing

    register_formats(psub)

    chk = subparsers.add_parser(
        "check", help="preflight a verl parquet: every row checked, token counts proven through verl's RLHFDataset",
        description="Check every row of a verl RL parquet. By default images are read from their headers and "
                    "prompts counted with the fast tokenizer in worker processes; a seeded sample of rows, every "
                    "row near the limit and every row the fast path cannot count are then loaded through verl's "
                    "RLHFDataset, and any count that differs fails the check. --full decodes every image and "
                    "loads every row through verl instead.")
    chk.add_argument("data", help="a verl RL parquet (train.parquet, val.parquet, ...)")
    chk.add_argument("--processor", default=None, help="local model folder (tokenizer + processor)")
    chk.add_argument("--max_prompt_length", type=int, default=None, help="data.max_prompt_length of the run")
    chk.add_argument("--image_key", default="images")
    chk.add_argument("--prompt_key", default="prompt")
    chk.add_argument("--show", type=int, default=10, help="row numbers listed per problem")
    chk.add_argument("--reward", "--reward_spec", dest="reward_spec", metavar="SPEC", default=None,
                     help="reward spec (YAML path / JSON) whose routes data_source must match (default: medrl's)")
    chk.add_argument("--full", action="store_true",
                     help="decode every image and load every row through verl's RLHFDataset (slow, the reference)")
    chk.add_argument("--verify", type=int, default=100,
                     help="rows (seeded sample) loaded through verl to prove the fast counts (default 100)")
    chk.add_argument("--margin", type=int, default=32,
                     help="rows within this many tokens of --max-prompt-length are all proven through verl")
    chk.add_argument("--seed", type=int, default=0, help="seed of the proof sample")
    chk.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    chk.add_argument("--no_progress", action="store_true")
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.set_defaults(func=run_check)

"""`medrl tiny-model`, `medrl train`, `medrl pipeline`, `medrl rehearse`, `medrl wiring` and `medrl demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medrl.training.argv import collect_overrides

OVERRIDE_HELP = (
    "key=value overrides: recipe keys (model, device, data.*, reward.*, resources.*) or verl keys "
    "(e.g. trainer.total_training_steps=2, +actor_rollout_ref.model.override_config.x=y); "
    "prefix a verl key with a stage name (sft.optim.lr=1e-4) to target that stage"
)


def _run_tiny_model(args: argparse.Namespace) -> int:
    from medrl.training.tiny_model import build_tiny_model

    path = build_tiny_model(args.out)
    print(f"tiny Qwen2.5-VL written to {path}")
    return 0


def _load(args: argparse.Namespace, stage: str | None = None):
    from medrl.training.recipes import apply_overrides, load_recipe

    recipe = load_recipe(args.recipe)
    if args.overrides:
        recipe = apply_overrides(recipe, args.overrides, stage)
    return recipe


def _run_train(args: argparse.Namespace) -> int:
    from medrl.training.pipeline import run_pipeline
    from medrl.training.recipes import RecipeError

    try:
        recipe = _load(args, args.stage)
        stage = recipe.stage(args.stage)
        out = Path(args.out or Path("runs") / recipe.name)
        if stage.init_from and not args.dry_run and not (out / stage.init_from / "merged").is_dir():
            print(f"stage {stage.name!r} starts from stage {stage.init_from!r}: run `medrl pipeline` "
                  f"or `medrl train {args.recipe} --stage {stage.init_from}` first", file=sys.stderr)
            return 2
        run_pipeline(recipe, out, stages=[stage.name], dry_run=args.dry_run)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_pipeline(args: argparse.Namespace) -> int:
    from medrl.training.pipeline import run_pipeline
    from medrl.training.recipes import RecipeError
    from medrl.training.summary import write_summary

    try:
        recipe = _load(args)
        out = Path(args.out or Path("runs") / recipe.name)
        manifest = run_pipeline(recipe, out, dry_run=args.dry_run)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.dry_run:
        summary = write_summary(out, manifest)
        print(summary.read_text())
        print(f"run folder: {out}")
    return 0


def _run_rehearse(args: argparse.Namespace) -> int:
    from medrl.training.algorithms import refuse_errors, stage_report
    from medrl.training.pipeline import run_pipeline
    from medrl.training.recipes import RecipeError, resolve_paths
    from medrl.training.rehearse import format_changes, preflight, rehearsal
    from medrl.training.verl_command import build_command

    try:
        gpu = _load(args)
        out = Path(args.out or Path("runs") / f"rehearse-{gpu.name}").resolve()
        recipe, changes = rehearsal(gpu, out, ranks=args.ranks)
        print(f"rehearsing {gpu.name} ({gpu.path}) on this CPU; changed keys:\n{format_changes(changes)}\n")
        # The algorithm as the GPU launch will run it: its keys, and what makes no sense, with the GPU's numbers.
        resolved = resolve_paths(gpu, out)
        reports = {st.name: stage_report(resolved, st) for st in resolved.stages if st.trainer == "ppo"}
        for name, (lines, _) in reports.items():
            print(f"stage {name} of the GPU recipe:\n" + "\n".join(lines) + "\n")
        refuse_errors(gpu, reports)
        # Every stage's verl keys are checked before anything is built or run.
        for st in recipe.stages:
            build_command(recipe, st, out / st.name, model_path=str(out / "model"))
        if args.dry_run:
            run_pipeline(recipe, out, dry_run=True, check_algorithms=False)
            return 0
        manifest = run_pipeline(recipe, out, preflight=preflight, check_algorithms=False)
    except RecipeError as exc:
        print(f"rehearsal failed: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a stage failed: its log names the cause
        print(f"rehearsal failed: {exc}", file=sys.stderr)
        return 1
    stages = ", ".join(f"{n} {m['status']} ({manifest['timings_s'].get(n, 0):.0f} s)"
                       for n, m in manifest["stages"].items())
    print(f"\nrehearsal of {gpu.name} passed: {stages}; run folder {out}\n"
          "Checked on this CPU: verl accepts every key, the data loads through verl's RLHFDataset, "
          "the reward scores real rollouts, every stage trains, checkpoints, validates and merges.\n"
          "Not checked: GPU memory, speed, multi-node networking, exact token counts of the real tokenizer.")
    return 0


def _run_wiring(args: argparse.Namespace) -> int:
    from medrl.training import wiring
    from medrl.training.recipes import RecipeError

    try:
        trace, recipe = wiring.run_traced(args.model, args.train, args.out, steps=args.steps, faults=args.faults,
                                          recipe=args.recipe, overrides=tuple(args.overrides))
    except (RecipeError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reports = wiring.check_run(trace, recipe)
    print(wiring.format_report(reports))
    clean = [r for r in reports if not r.fault]
    return 0 if all(r.passed for r in clean) else 1


def register(subparsers) -> None:
    """Add the training sub-commands to the `medrl` parser."""
    p = subparsers.add_parser("tiny-model", help="build a tiny random Qwen2.5-VL offline (tests, rehearsal)")
    p.add_argument("out", help="output folder")
    p.set_defaults(func=_run_tiny_model)

    for name, fn, helptext in (
        ("train", _run_train, "run one stage of a recipe with verl (default: the last stage)"),
        ("pipeline", _run_pipeline, "run all stages of a recipe: SFT -> merge -> RL -> merge, with a manifest"),
    ):
        p = subparsers.add_parser(name, help=helptext, description=helptext)
        p.add_argument("recipe", help="recipe name (recipes/NAME.yaml) or path")
        p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDE_HELP)
        p.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
        p.add_argument("--dry-run", action="store_true", help="print the exact verl command line(s) and stop")
        if name == "train":
            p.add_argument("--stage", default=None, help="stage to run (default: the last one)")
        p.set_defaults(func=fn)
        collect_overrides(p)

    p = subparsers.add_parser(
        "rehearse", help="run a GPU recipe as written on this CPU: tiny model, small sizes, every stage 2 steps",
        description="Rehearse a GPU recipe on this CPU with the tiny model: same verl trainers, same vLLM "
                    "rollout, same reward and data; only the model, the sizes and device-only keys change "
                    "(each change is printed with its reason).")
    p.add_argument("recipe", help="recipe name (recipes/NAME.yaml) or path")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDE_HELP)
    p.add_argument("--out", default=None, help="run folder (default runs/rehearse-<recipe name>)")
    p.add_argument("--ranks", type=int, default=1,
                   help="CPU ranks (FSDP shards and vLLM replicas); 2 also rehearses sharding (default 1: faster)")
    p.add_argument("--dry-run", action="store_true", help="print the changes and the verl command lines, then stop")
    p.set_defaults(func=_run_rehearse)
    collect_overrides(p)

    p = subparsers.add_parser(
        "wiring", help="check that each GRPO step's rewards, images and groups reach the right rollouts",
        description="Run a few traced GRPO steps of a recipe's RL stage (verl's own trainer) and check, per "
                    "step, against the training parquet: each reward re-scored on its own row's truth, one "
                    "row/prompt/image per group, the actor's pixels from the right row, advantages ordered as "
                    "rewards, the update favouring each group's best rollout, the rollout using fresh weights.")
    p.add_argument("--model", required=True, help="HF folder the RL stage starts from (e.g. <run>/sft/merged)")
    p.add_argument("--train", required=True, help="the RL training parquet")
    p.add_argument("--recipe", default="cpu_tiny", help="recipe whose RL stage is traced (default cpu_tiny)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--faults", default="", help="inject faults, e.g. 2:shuffle_rewards,3:swap_images (tests)")
    p.add_argument("--out", default="runs/wiring", help="run folder (trace, log)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDE_HELP)
    p.set_defaults(func=_run_wiring)
    collect_overrides(p)

    p = subparsers.add_parser(
        "demo", help="the main job on CPU: tiny model, sample data, SFT warm-up, GRPO, merge, summary"
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDE_HELP)
    p.add_argument("--dry-run", action="store_true", help="print the verl command lines and stop")
    p.set_defaults(func=_run_pipeline, recipe="cpu_tiny")
    collect_overrides(p)

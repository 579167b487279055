"""Entry points behind the seed's script names in examples/data_preprocess/ (same arguments, one converter)."""

from __future__ import annotations

from medrl.data.prepare_args import add_convert_arguments, options_from_args, print_summary
from medrl.flags import Parser

# The seed's "fast" variant cut prompts over 8192 characters (about 2048 tokens).
FAST_MAX_PROMPT_CHARS = 8192

PRESETS = {
    "mimic_mm": ("report", "LLaVA JSON (reports, general multimodal answers) -> verl parquet"),
    "llava_json_to_verl_iou": ("grounding", "LLaVA JSON with boxes in the answers -> verl parquet (IoU reward)"),
    "llava_json_to_verl_iou_fast": ("grounding", "the same, with the character pre-filter on (--fast)"),
    "convert_llava_to_verl_iou": ("grounding", "LLaVA-format parquet -> verl parquet (IoU reward)"),
}


def seed_script_main(preset: str, argv: list[str] | None = None) -> int:
    """Parse the seed-style arguments for `preset` and run the medrl converter."""
    task, description = PRESETS[preset]
    p = Parser(description=f"{description}. Thin door into `medrl prepare {task}`; "
                                "every `medrl prepare` option is accepted too.")
    p.add_argument("input", nargs="?", help="input file (LLaVA JSON / JSONL / parquet)")
    p.add_argument("--json_path", "--parquet_path", dest="input_opt", default=None, help="input file (seed spelling)")
    add_convert_arguments(p, with_inputs=False)
    if preset != "mimic_mm":
        p.add_argument("--fast", action="store_true",
                       help=f"cheap pre-filter: drop prompts over {FAST_MAX_PROMPT_CHARS} characters")
    if preset == "convert_llava_to_verl_iou":
        p.set_defaults(split_name="train")
    args = p.parse_args(argv)
    source = args.input or args.input_opt
    if not source:
        p.error("give the input file (positional or --json_path)")
    args.inputs = [source]
    if getattr(args, "fast", False) or preset == "llava_json_to_verl_iou_fast":
        args.max_prompt_chars = args.max_prompt_chars or FAST_MAX_PROMPT_CHARS
    from medrl.data.convert import convert

    summary = convert(options_from_args(args, task))
    print_summary(summary, as_json=args.json)
    return 1 if summary.get("strict_failure") else 0

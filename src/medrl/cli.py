"""The `medrl` command: one sub-command per concept, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes `register(subparsers)`, adding its sub-command(s) with
# `set_defaults(func=...)`. Modules are imported lazily-ish: only their
# `register` runs at start-up, heavy imports stay inside the command functions.
COMMAND_MODULES = [
    "medrl.data.commands",      # prepare, check
    "medrl.rewards.commands",   # reward score / explain
    "medrl.training.commands",  # tiny-model, train, pipeline, demo
    "medrl.slurm",              # slurm
    "medrl.export.commands",    # merge, eval
]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser from every installed command module."""
    parser = argparse.ArgumentParser(
        prog="medrl", description="Reinforcement-learning post-training of medical vision-language models on verl."
    )
    parser.add_argument("--version", action="version", version=f"medrl {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name or name.startswith(f"{exc.name}."):
                continue  # that part of medrl is not built yet
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from medrl import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `medrl` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The `medrl` command: one sub-command per concept, each registered by its own module."""

from __future__ import annotations

import argparse
import sys

from medrl import slurm
from medrl.flags import Parser
from medrl.data import commands as data_commands
from medrl.evaluation import commands as evaluation_commands
from medrl.export import commands as export_commands
from medrl.rewards import commands as reward_commands
from medrl.training import commands as training_commands

# Each module exposes `register(subparsers)`, adding its sub-command(s) with
# `set_defaults(func=...)`. Only `register` runs at start-up; heavy imports stay
# inside the command functions.
COMMAND_MODULES = [
    data_commands,      # prepare, check
    reward_commands,    # reward score / explain / new / check
    training_commands,  # tiny-model, train, rehearse, wiring, pipeline, demo
    slurm,              # slurm
    export_commands,    # merge
    evaluation_commands,  # eval
]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser from every installed command module."""
    parser = Parser(
        prog="medrl", description="Reinforcement-learning post-training of medical vision-language models on verl."
    )
    parser.add_argument("--version", action="version", version=f"medrl {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
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

"""`key=value` overrides anywhere on a command line, for `medrl train|pipeline|demo|slurm`."""

from __future__ import annotations

import argparse
import sys


def collect_overrides(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let `key=value` overrides come before, between or after options (`R --out X a=b`, `R -- a=b`).

    argparse stops a `nargs="*"` positional at the first option and refuses what follows it;
    here every loose word (and everything after `--`) is appended to `args.overrides`, and
    `args.argv` keeps the words as given. Unknown `--options` are still refused.
    """
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        ns, extras = parse_known(argv, namespace)
        ns.argv = argv
        tail: list[str] = []
        if "--" in extras:
            cut = extras.index("--")
            extras, tail = extras[:cut], extras[cut + 1:]
        loose = [e for e in extras if not e.startswith("-")]
        ns.overrides = [*(ns.overrides or []), *loose, *tail]
        return ns, [e for e in extras if e.startswith("-")]

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
    return parser

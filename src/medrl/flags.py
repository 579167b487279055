"""One flag style for every medrl command: kebab-case long options; the old spellings still work, unlisted.

Commands declare their options as they like (`--dataset_filter`, `--out`, ...). A `Parser`
shows each option under the kebab-case form of its first long name, and accepts as hidden
aliases its other long names and the snake_case and kebab-case twin of each, so users'
scripts and the seed's script names keep working while `--help` lists one spelling:

    p.add_argument("--out", "--output_dir", dest="output_dir")   # shown: --out
    p.add_argument("--dataset_filter")                            # shown: --dataset-filter

A `--x/--no-x` switch (argparse.BooleanOptionalAction) keeps both forms shown. An
abbreviation that matches several spellings of one option is that option, not ambiguous.
"""

from __future__ import annotations

import argparse
from typing import Any


def kebab(option: str) -> str:
    """`--dataset_filter` -> `--dataset-filter` (short options unchanged)."""
    return "--" + option[2:].replace("_", "-") if option.startswith("--") else option


def snake(option: str) -> str:
    """`--dataset-filter` -> `--dataset_filter` (short options unchanged)."""
    return "--" + option[2:].replace("-", "_") if option.startswith("--") else option


def spellings(options: list[str]) -> list[str]:
    """Every accepted spelling of an option declared as `options`: each name, its kebab and snake twins."""
    out: list[str] = []
    for o in options:
        for s in (o, kebab(o), snake(o)):
            if s not in out:
                out.append(s)
    return out


class _HiddenNo(argparse.Action):
    """A hidden `--no_x` spelling of a `--x/--no-x` switch: sets it False."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None):
        setattr(namespace, self.dest, False)


class Parser(argparse.ArgumentParser):
    """ArgumentParser with one flag style (see the module rule); sub-command parsers are Parsers too."""

    _kebab_done = False

    def kebab_case(self) -> None:
        """Show every long option in kebab case and accept its other spellings unlisted (once)."""
        if self._kebab_done:
            return
        self._kebab_done = True
        for action in self._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if not longs:
                continue
            shorts = [o for o in action.option_strings if not o.startswith("--")]
            if isinstance(action, argparse.BooleanOptionalAction):
                yes = longs[0]
                shown = [kebab(yes), "--no-" + kebab(yes)[2:]]
                for o in spellings(["--no-" + yes[2:], "--no_" + yes[2:]]):
                    if o not in shown and o not in self._option_string_actions:
                        self._option_string_actions[o] = _HiddenNo([o], action.dest, nargs=0)
            else:
                shown = [kebab(longs[0])]
            if any(self._option_string_actions.get(o, action) is not action for o in shown):
                shown = longs[:1] + longs[1:2] * isinstance(action, argparse.BooleanOptionalAction)  # taken
            for o in spellings(longs if not isinstance(action, argparse.BooleanOptionalAction) else longs[:1]):
                if self._option_string_actions.get(o, action) is action:
                    self._option_string_actions[o] = action
            for o in shown:
                self._option_string_actions[o] = action
            action.option_strings = shorts + shown

    def parse_known_args(self, args: Any = None, namespace: Any = None):  # noqa: D102 - argparse's
        self.kebab_case()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:  # noqa: D102 - argparse's
        self.kebab_case()
        return super().format_help()

    def format_usage(self) -> str:  # noqa: D102 - argparse's
        self.kebab_case()
        return super().format_usage()

    def _get_option_tuples(self, option_string: str) -> list:
        # `--data` matching `--data-source` and `--data_source` is one option, not an ambiguity.
        seen: set[int] = set()
        out = []
        for t in super()._get_option_tuples(option_string):
            if id(t[0]) not in seen:
                seen.add(id(t[0]))
                out.append(t)
        return out


def hidden_spellings(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{accepted spelling: the shown one} for every unlisted spelling of `parser`'s options."""
    if isinstance(parser, Parser):
        parser.kebab_case()
    out = {}
    for o, action in parser._option_string_actions.items():
        if o not in action.option_strings and action.option_strings:
            shown = [s for s in action.option_strings if s.startswith("--")]
            out[o] = shown[0] if shown else action.option_strings[0]
    return out

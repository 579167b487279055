"""The `medrl` command line: every command's help, one flag style, the old spellings still accepted."""

from __future__ import annotations

import argparse

import pytest

from medrl.cli import build_parser, main
from medrl.flags import Parser, hidden_spellings, kebab, snake


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(words, parser) for the command and every sub-command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


ALL = list(commands(build_parser()))


def test_there_are_commands_to_walk():
    names = {" ".join(p) for p, _ in ALL}
    assert {"prepare grounding", "prepare mix", "check", "reward score", "reward check", "train", "rehearse",
            "slurm", "eval", "merge"} <= names


@pytest.mark.parametrize("path, parser", ALL, ids=[" ".join(p) or "medrl" for p, _ in ALL])
def test_help_lists_kebab_case_and_every_snake_twin_is_accepted(path, parser, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: medrl")
    aliases = hidden_spellings(parser)  # (this also gives the walked parser the style `main`'s got)
    accepted = parser._option_string_actions
    for action in parser._actions:
        for option in (o for o in action.option_strings if o.startswith("--")):
            assert option == kebab(option), f"medrl {' '.join(path)}: {option} is listed in snake_case"
            assert option in text or action.help == argparse.SUPPRESS
            twin = accepted.get(snake(option))
            assert twin is not None, f"medrl {' '.join(path)}: {snake(option)} is not accepted"
            assert twin.dest == action.dest
    listed = [a for a in aliases if any(a == w.strip(",.;:()`'[]") for w in text.split())]
    assert listed == [], f"medrl {' '.join(path)}: help text names old spellings"


def _parse(argv):
    return build_parser().parse_args(argv)


def test_old_spellings_reach_the_same_settings():
    new = _parse(["prepare", "grounding", "in.json", "--out", "d", "--dataset-filter", "a", "b", "--data-source",
                  "x/y", "--no-verify-images", "--row-group-size", "8"])
    for old in (["--output_dir", "d"], ["--local_dir", "d"], ["--output-dir", "d"]):
        seed = _parse(["prepare", "grounding", "in.json", *old, "--dataset_filter", "a", "b", "--data_source", "x/y",
                       "--no_verify_images", "--batch_size", "8"])
        assert vars(seed) == vars(new)
    assert _parse(["prepare", "grounding", "in.json", "--out", "d", "--verify_images"]).verify_images is True
    assert _parse(["check", "f.parquet", "--reward_spec", "s.yaml"]).reward_spec == "s.yaml"
    assert _parse(["check", "f.parquet", "--reward", "s.yaml"]).reward_spec == "s.yaml"
    score = ["reward", "score", "--input", "r.jsonl"]
    assert _parse([*score, "--output", "o.jsonl", "--data_source", "d"]).output == "o.jsonl"
    assert _parse([*score, "--out", "o.jsonl", "--data-source", "d"]).data_source == "d"
    assert _parse(["prepare", "mix", "spec.yaml", "--output", "m.parquet"]).output == "m.parquet"
    assert _parse(["eval", "m", "--data", "v.parquet", "--box_convention", "norm1"]).box_convention == "norm1"


def test_an_abbreviation_of_one_option_is_not_ambiguous_and_unknown_options_fail(capsys):
    assert _parse(["reward", "score", "--input", "r.jsonl", "--data", "d"]).data_source == "d"
    with pytest.raises(SystemExit):
        _parse(["check", "f.parquet", "--reward-specc", "s"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_a_parser_of_its_own_gets_the_same_style():
    p = Parser(prog="x")
    p.add_argument("--max_pixels", type=int)
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True)
    assert "--max-pixels" in p.format_help() and "--max_pixels" not in p.format_help()
    assert p.parse_args(["--max_pixels", "3", "--no_fast"]) == argparse.Namespace(max_pixels=3, fast=False)
    assert p.parse_args(["--max-pixels=4", "--no-fast"]) == argparse.Namespace(max_pixels=4, fast=False)

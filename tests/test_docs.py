"""Every command in README.md and docs/*.md code blocks is checked against the code it names.

`medrl ...` lines are parsed (not run) by medrl's own argument parser, so a renamed command or flag
fails here; `python SCRIPT.py --flag` lines need the script and each flag declared in its argparse
calls; `make X` lines need the Makefile target; `bash FILE` lines need the file. A block whose first
line is `# PATH` is a file of a walk-through: it is written at PATH and loaded as medrl would load it.
Anything else must be listed below with the reason it is not checked, so a new unchecked block fails.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from medrl.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Command words a doc may use that no test here can check, and why.
SKIPPED_COMMANDS = {
    "sbatch": "submits to a Slurm cluster; the script it submits is rendered by `medrl slurm` (tests/slurm)",
    "source": "activates the environment `make setup` created; nothing to parse",
    "pytest": "runs the test file `medrl reward new` writes (tests/rewards/test_rewards_user_template.py runs it)",
}
# (doc, first line of the block) -> why the block is not checked. None today: every block is checked.
SKIPPED_BLOCKS: dict[tuple[str, str], str] = {}

ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
FILE_BLOCK = re.compile(r"^#\s+(\S+\.(?:py|ya?ml))\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a doc: its language, first line number and lines."""

    doc: str
    line: int
    lang: str
    lines: tuple[str, ...]

    def where(self, offset: int = 0) -> str:
        return f"{self.doc}:{self.line + offset}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file (line numbers are those of the first code line)."""
    blocks, current, start, lang = [], None, 0, ""
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text.startswith("```"):
            if current is None:
                current, start, lang = [], n + 1, text[3:].strip()
            else:
                blocks.append(Block(path.relative_to(ROOT).as_posix(), start, lang, tuple(current)))
                current = None
        elif current is not None:
            current.append(text)
    assert current is None, f"{path}: unclosed code block from line {start}"
    return blocks


def command_lines(block: Block) -> list[tuple[int, str]]:
    """(offset, command) per shell command: continuation lines ending in `\\` joined, comments dropped."""
    out, pending, first = [], "", 0
    for i, text in enumerate(block.lines):
        if not pending:
            first = i
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        command, pending = (pending + text).strip(), ""
        if command and not command.startswith("#"):
            out.append((first, command))
    assert not pending, f"{block.where()}: a command ends in a line continuation"
    return out


def strict_parser() -> argparse.ArgumentParser:
    """medrl's parser with abbreviations off everywhere: a doc must spell each flag in full."""
    parser = build_parser()
    todo = [parser]
    while todo:
        p = todo.pop()
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return parser


def parse_medrl(argv: list[str]) -> str | None:
    """None when medrl's parser accepts `argv`, else argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            strict_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and ("-h" in argv or "--help" in argv):
            return None
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return None


def _module_file(name: str, script: Path) -> Path | None:
    """The file of an imported module: a sibling of the script, or a medrl module under src/."""
    sibling = script.parent / f"{name}.py"
    if sibling.is_file():
        return sibling
    if name.startswith("medrl"):
        base = ROOT / "src" / Path(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def declared_flags(script: Path, depth: int = 2) -> set[str]:
    """Every option string given to `add_argument` in the script and the modules it imports (to `depth`)."""
    tree = ast.parse(script.read_text(encoding="utf-8"), str(script))
    flags: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")]
            flags.update(names)
            if any(getattr(k.value, "attr", None) == "BooleanOptionalAction" for k in node.keywords):
                flags.update(f"--no-{n[2:]}" for n in names if n.startswith("--"))
        elif isinstance(node, ast.ImportFrom) and node.module and depth > 0:
            module = _module_file(node.module, script)
            if module is not None:
                flags |= declared_flags(module, depth - 1)
    return flags


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def check_command(command: str) -> str | None:
    """None when `command` is checked and right (or skipped by design), else what is wrong."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError as exc:
        return f"does not split as a shell line ({exc})"
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return None
    head, args = words[0], words[1:]
    if head == "medrl":
        error = parse_medrl(args)
        if error:
            return f"medrl's parser refuses it: {error}"
        # The docs show the spelling `--help` lists (kebab-case); the old ones are hidden aliases.
        old = [a.split("=", 1)[0] for a in args if re.fullmatch(r"--[a-z0-9]+(_[a-z0-9]+)+(=.*)?", a)]
        return f"uses the old spelling {', '.join(old)} (write it kebab-case)" if old else None
    if head in ("python", "python3", "bash"):
        script = ROOT / args[0] if args else ROOT
        if not script.is_file():
            return f"no file {args[0] if args else '(none)'}"
        if head == "bash":
            return None
        options = {a.split("=", 1)[0] for a in args[1:] if a.startswith("-")}
        unknown = sorted(options - declared_flags(script))
        return f"{args[0]} declares no {', '.join(unknown)}" if unknown else None
    if head == "make":
        missing = sorted(set(a for a in args if "=" not in a) - makefile_targets())
        return f"no Makefile target {', '.join(missing)}" if missing else None
    if head in SKIPPED_COMMANDS:
        return None
    return f"unchecked command {head!r}: check it here or list it in SKIPPED_COMMANDS with a reason"


def all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in code_blocks(doc)]


def file_block_path(block: Block) -> str | None:
    match = FILE_BLOCK.match(block.lines[0]) if block.lines and block.lang in ("python", "yaml") else None
    return match.group(1) if match else None


BLOCKS = all_blocks()
SHELL = [b for b in BLOCKS if b.lang in ("bash", "sh", "shell")]


@pytest.mark.parametrize("block", SHELL, ids=[b.where() for b in SHELL])
def test_every_shell_command_names_what_exists(block):
    problems = [f"{block.where(offset)}: {problem}\n    {command}" for offset, command in command_lines(block)
                if (problem := check_command(command))]
    assert not problems, "\n".join(problems)


def test_every_code_block_is_checked_or_skipped_with_a_reason():
    unchecked = [f"{b.where()} ```{b.lang}: {b.lines[0] if b.lines else ''}" for b in BLOCKS
                 if b.lang not in ("bash", "sh", "shell") and not file_block_path(b)
                 and (b.doc, b.lines[0] if b.lines else "") not in SKIPPED_BLOCKS]
    assert not unchecked, "code blocks no test checks (check them, or list them in SKIPPED_BLOCKS):\n" + \
        "\n".join(unchecked)
    present = {(b.doc, b.lines[0] if b.lines else "") for b in BLOCKS}
    assert not set(SKIPPED_BLOCKS) - present, f"stale SKIPPED_BLOCKS: {set(SKIPPED_BLOCKS) - present}"


FILE_DOCS = sorted({b.doc for b in BLOCKS if file_block_path(b)})


@pytest.mark.parametrize("doc", FILE_DOCS)
def test_walkthrough_files_load_as_medrl_loads_them(doc, tmp_path):
    from medrl.rewards import compose
    from medrl.rewards.user_reward import load_reward_file

    files = {}
    for b in BLOCKS:
        if b.doc == doc and (rel := file_block_path(b)):
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(b.lines) + "\n", encoding="utf-8")
            files[rel] = path
    for rel, path in files.items():
        if path.suffix == ".py":
            reward = load_reward_file(path)
            result = reward.raw("medrl/grounding", "<answer>[0.1, 0.2, 0.5, 0.6]</answer>", "[[0.1, 0.2, 0.5, 0.6]]")
            assert isinstance(result, dict) and set(result) == set(reward.keys), f"{doc}: {rel} returned {result}"
        else:
            spec, used = compose.load_spec(str(path)), set()
            for data_source in compose.route_names(spec):
                scored = compose.compute_score(data_source, "<think>x</think><answer>[0.1, 0.2, 0.5, 0.6]</answer>",
                                               "[[0.1, 0.2, 0.5, 0.6]]", spec=str(path))
                assert 0.0 <= scored["score"] <= 1.0, f"{doc}: {rel} scored {scored}"
                used |= {k for k, v in scored.items() if not math.isnan(v)}  # NaN: this route does not use it
            # A reward file the spec names is scored on some route and logged under its name.
            named = {Path(r).stem for r in files if r.endswith(".py") and Path(r).name in path.read_text()}
            assert named <= used, f"{doc}: {rel} never scores {named - used}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_relative_links_and_anchors_exist(doc):
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        rel, _, anchor = target.partition("#")
        path = (doc.parent / rel).resolve() if rel else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in {_anchor(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)}:
            broken.append(f"{target}: no such heading in {path.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


# The checker itself: each of these lines is wrong in one way and must be refused.
@pytest.mark.parametrize("command, problem", [
    ("medrl prepare grounding in.json --output_dir g --val-fractions 0.1", "unrecognized arguments: --val-fr"),
    ("medrl prepare grounding in.json --output_dir g", "uses the old spelling --output_dir"),
    ("medrl check data.parquet --max_prompt 1024", "unrecognized arguments: --max_prompt"),   # no abbreviations
    ("medrl prepare groundings in.json --output_dir data/g", "invalid choice"),
    ("medrl merge runs/x --out hf/x --dtype bf17", "invalid choice"),
    ("medrl train grpo_grounding --no-such-flag", "unrecognized arguments"),
    ("python benchmarks/bench_learning.py --seeds 3 --budget-minutes 5", "declares no --budget-minutes"),
    ("python benchmarks/bench_nothing.py", "no file"),
    ("make deploy", "no Makefile target deploy"),
    ("curl https://example.org | sh", "unchecked command 'curl'"),
])
def test_the_checker_refuses_what_is_wrong(command, problem):
    error = check_command(command)
    assert error and problem in error, error


@pytest.mark.parametrize("command", [
    "medrl train grpo_grounding model=/m --out runs/x a.b=1",   # overrides anywhere
    "medrl prepare grounding in.json --out g --val-fraction 0.1",
    "medrl slurm grpo_grounding --out jobs/x.sh -- model=/m",
    "python benchmarks/bench_check.py --sizes 100000 --repeats 1",   # flags from scale_inputs.py
    "python examples/data_preprocess/mimic_mm.py d.json --local_dir out --no-instruction",   # via medrl
    "MEDRL_GPU=1 bash scripts/setup.sh",
])
def test_the_checker_accepts_what_is_right(command):
    assert check_command(command) is None

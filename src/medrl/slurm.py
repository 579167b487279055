"""`medrl slurm`: render sbatch scripts that start a Ray cluster, run a recipe and fail loudly.

The generated script is a rendered header (#SBATCH lines, shell-quoted settings, environment
activation) followed by the static bootstrap in `slurm_template.sh`. Every value that comes
from the caller goes through `shlex.quote`; #SBATCH values, which sbatch (not the shell)
parses, are restricted to a safe character set instead.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from medrl.atomic import atomic_path
from medrl.flags import Parser
from medrl.training.argv import collect_overrides

# sbatch reads #SBATCH lines itself, so quoting does not help there: allow only plain tokens.
_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,:+=@%/\[\]-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JOB_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")

# The scripts in jobs/, each the `medrl slurm` arguments that generate it (--out added).
# The first two are the seed's names; regenerate all with `write_example_jobs("jobs")`.
_GPU_NODE = ["--gpus-per-node", "4", "--venv", ".venv", "--time", "24:00:00"]
EXAMPLE_JOBS = {
    "single_node_enhanced.sh": ["grpo_enhanced", *_GPU_NODE],
    "single_node_basic.sh": ["grpo_grounding", *_GPU_NODE],
    "multi_node_enhanced.sh": ["grpo_enhanced", "--nodes", "4", *_GPU_NODE],
}
SEED_JOBS = ("single_node_enhanced.sh", "single_node_basic.sh")


@dataclass
class SlurmJob:
    """Everything `medrl slurm` needs to render one sbatch script."""

    recipe: str
    nodes: int = 1
    gpus_per_node: int = 0
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    job_name: str | None = None
    output: str | None = None
    workdir: str | None = None
    env_setup: str | None = None
    venv: str | None = None
    conda: str | None = None
    modules: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    pipeline: bool = False
    rehearse: bool = False
    overrides: list[str] = field(default_factory=list)
    judge_node: bool = False
    judge_model: str | None = None
    judge_port: int = 8000
    judge_wait: int = 1800
    judge_args: list[str] = field(default_factory=list)
    ray_port: str = "auto"
    ray_wait: int = 300
    ray_cpus: int | None = None
    ray_gpus: int | None = None
    ray_object_store: int | None = None
    ray_tmp: str | None = None
    ray_start_args: list[str] = field(default_factory=list)
    ray_auth: str = "token"
    # Test hooks (hidden on the command line): replace the command / the workers' start,
    # add Ray "nodes" on the head host, replace the judge server.
    command: str | None = None
    worker_start: str | None = None
    simulate_workers: int = 0
    judge_command: str | None = None
    generated_by: str | None = None


class SlurmJobError(ValueError):
    """A job description that cannot be rendered safely."""


def _sbatch_value(name: str, value: object) -> str:
    text = str(value)
    if not _SBATCH_VALUE.match(text):
        raise SlurmJobError(
            f"--{name.replace('_', '-')} {text!r}: #SBATCH values are read by sbatch, not the shell, "
            "so only letters, digits and _.,:+=@%/[]- are allowed (no spaces or quotes)")
    return text


def _array(values: list[str]) -> str:
    return "(" + " ".join(shlex.quote(v) for v in values) + ")"


def _comment(text: str) -> str:
    # A newline inside a comment would end it and start a command: show control characters instead.
    return "".join(ch if ch >= " " else f"\\x{ord(ch):02x}" for ch in text)


def validate(job: SlurmJob) -> None:
    """Raise SlurmJobError naming the first option that cannot work."""
    if not job.recipe or not job.recipe.strip():
        raise SlurmJobError("RECIPE is empty")
    if job.nodes < 1:
        raise SlurmJobError(f"--nodes {job.nodes}: need at least 1")
    if job.gpus_per_node < 0:
        raise SlurmJobError(f"--gpus-per-node {job.gpus_per_node}: cannot be negative")
    if job.ray_wait < 1 or job.judge_wait < 1:
        raise SlurmJobError("--ray-wait and --judge-wait must be at least 1 second")
    if job.ray_port != "auto" and not (str(job.ray_port).isdigit() and 1024 <= int(job.ray_port) <= 65000):
        raise SlurmJobError(f"--ray-port {job.ray_port!r}: 'auto' or a number in 1024..65000")
    if job.ray_auth not in ("token", "disabled"):
        raise SlurmJobError(f"--ray-auth {job.ray_auth!r}: 'token' or 'disabled'")
    if job.simulate_workers < 0:
        raise SlurmJobError("--simulate-workers cannot be negative")
    if job.rehearse and job.pipeline:
        raise SlurmJobError("--rehearse and --pipeline: choose one (a rehearsal runs every stage of the recipe)")
    if job.rehearse and job.nodes != 1:
        raise SlurmJobError(f"--rehearse with --nodes {job.nodes}: a rehearsal runs on one node (its CPU)")
    if job.judge_node and not (job.judge_model or job.judge_command):
        raise SlurmJobError("--judge-node needs --judge-model (the model vLLM serves)")
    for name in ("partition", "time", "account", "qos", "mem", "output"):
        if getattr(job, name) is not None:
            _sbatch_value(name, getattr(job, name))
    for item in job.env:
        if not _ENV_NAME.match(item.split("=", 1)[0]) or "=" not in item:
            raise SlurmJobError(f"--env {item!r}: expected NAME=VALUE with a shell variable name")
    if job.ray_gpus is not None and job.ray_gpus < 0:
        raise SlurmJobError(f"--ray-gpus {job.ray_gpus}: cannot be negative")
    for name in ("cpus_per_task", "ray_cpus", "ray_object_store"):
        value = getattr(job, name)
        if value is not None and value < 1:
            raise SlurmJobError(f"--{name.replace('_', '-')} {value}: must be positive")


def job_command(job: SlurmJob) -> list[str]:
    """The argv run on the Ray head: `medrl train|pipeline|rehearse RECIPE overrides...`."""
    if job.rehearse:
        # The rehearsal sizes the recipe for one CPU itself: no resources derived from the allocation.
        return ["medrl", "rehearse", job.recipe, *job.overrides]
    keys = {o.lstrip("+~").split("=", 1)[0] for o in job.overrides}
    derived = []
    # The recipe's resources become verl's trainer.nnodes / n_gpus_per_node: match the allocation.
    if "resources.nnodes" not in keys:
        derived.append(f"resources.nnodes={job.nodes}")
    if job.gpus_per_node > 0 and "resources.gpus_per_node" not in keys:
        derived.append(f"resources.gpus_per_node={job.gpus_per_node}")
    # Derived first: the caller's own arguments (possibly options like --out) end the line.
    overrides = [*derived, *job.overrides]
    return ["medrl", "pipeline" if job.pipeline else "train", job.recipe, *overrides]


def _sbatch_lines(job: SlurmJob) -> list[str]:
    stem = Path(job.recipe).stem if job.recipe.endswith((".yaml", ".yml")) else job.recipe
    name = job.job_name or "medrl-" + (_JOB_NAME_BAD.sub("_", stem).strip("_") or "job")
    lines = [f"--job-name={_sbatch_value('job_name', name)}",
             f"--nodes={job.nodes + (1 if job.judge_node and not job.simulate_workers else 0)}",
             "--ntasks-per-node=1"]
    if job.gpus_per_node > 0:  # Slurm rejects any gres request on nodes without GPUs
        lines.append(f"--gres=gpu:{job.gpus_per_node}")
    for opt, value in (("cpus-per-task", job.cpus_per_task), ("mem", job.mem), ("time", job.time),
                       ("partition", job.partition), ("account", job.account), ("qos", job.qos)):
        if value is not None:
            lines.append(f"--{opt}={_sbatch_value(opt, value)}")
    lines.append(f"--output={_sbatch_value('output', job.output or '%x-%j.out')}")
    return ["#SBATCH " + line for line in lines]


def _env_lines(job: SlurmJob) -> list[str]:
    lines = []
    if job.workdir:
        lines.append(f"cd -- {shlex.quote(job.workdir)}")
    lines += [f"module load {shlex.quote(m)}" for m in job.modules]
    if job.conda:
        lines += ['eval "$(conda shell.bash hook)"', f"conda activate {shlex.quote(job.conda)}"]
    if job.venv:
        lines += ["# shellcheck source=/dev/null",
                  f"source {shlex.quote(os.path.join(job.venv, 'bin', 'activate'))}"]
    if job.env_setup:
        lines += ["# shellcheck source=/dev/null", f"source {shlex.quote(job.env_setup)}"]
    # Exported before Ray starts, so the raylets and every Ray worker inherit them.
    lines += [f"export {name}={shlex.quote(value)}" for name, value in
              (item.split("=", 1) for item in job.env)]
    if not lines:
        return ["# (none: medrl, ray and python3 must already be on PATH)"]
    return lines


def judge_command(job: SlurmJob) -> list[str]:
    """The command the judge node runs: `vllm serve` of the judge model on all interfaces."""
    if job.judge_command:
        return ["bash", "-c", job.judge_command]
    return ["vllm", "serve", job.judge_model or "", "--host", "0.0.0.0", "--port", str(job.judge_port),
            *job.judge_args]


def render(job: SlurmJob) -> str:
    """Render the full sbatch script text for `job`."""
    validate(job)
    from medrl import __version__

    command = ["bash", "-c", job.command] if job.command else job_command(job)
    worker_start = ["bash", "-c", job.worker_start, "worker-start"] if job.worker_start else ["ray", "start"]
    judge = judge_command(job)
    gpus = job.ray_gpus if job.ray_gpus is not None else (job.gpus_per_node or None)
    settings = {
        "MEDRL_RAY_PORT": shlex.quote(str(job.ray_port)),
        "MEDRL_RAY_WAIT": str(int(job.ray_wait)),
        "MEDRL_RAY_CPUS": str(job.ray_cpus) if job.ray_cpus else "${SLURM_CPUS_PER_TASK:-}",
        "MEDRL_RAY_GPUS": str(gpus) if gpus is not None else "''",
        "MEDRL_RAY_OBJECT_STORE": str(job.ray_object_store) if job.ray_object_store else "''",
        "MEDRL_RAY_TMP": shlex.quote(job.ray_tmp) if job.ray_tmp else "''",
        "MEDRL_RAY_EXTRA": _array(job.ray_start_args),
        "MEDRL_RAY_AUTH": shlex.quote(job.ray_auth),
        "MEDRL_RAY_START": _array(["ray", "start"]),
        "MEDRL_RAY_WORKER_START": _array(worker_start),
        "MEDRL_SIM_WORKERS": str(int(job.simulate_workers)),
        "MEDRL_JUDGE": "1" if job.judge_node else "0",
        "MEDRL_JUDGE_PORT": str(int(job.judge_port)),
        "MEDRL_JUDGE_WAIT": str(int(job.judge_wait)),
        "MEDRL_JUDGE_COMMAND": _array(judge),
        "MEDRL_COMMAND": _array(command),
    }
    out = ["#!/bin/bash", f"# Generated by medrl {__version__}; regenerate rather than edit:",
           "#   " + _comment(job.generated_by or "medrl.slurm.render_job(...)"),
           "# Values are single-quoted on purpose (no expansion):",
           "# shellcheck disable=SC2016",
           *_sbatch_lines(job), "",
           # Activation scripts (conda, modules) often read unset variables: -u only after them.
           "set -eo pipefail", "", "# ---- environment ----", *_env_lines(job), "set -u", "",
           "# ---- settings (every value shell-quoted) ----"]
    out += [f"{k}={v}" for k, v in settings.items()]
    if job.judge_model:  # read by medrl's judge reward (with MEDRL_JUDGE_URL, set by the bootstrap)
        out.append(f"export MEDRL_JUDGE_MODEL={shlex.quote(job.judge_model)}")
    template = resources.files("medrl").joinpath("slurm_template.sh").read_text(encoding="utf-8")
    return "\n".join(out) + "\n\n" + template


def render_job(recipe: str, **options) -> str:
    """Render an sbatch script for `recipe`; options are the fields of SlurmJob."""
    return render(SlurmJob(recipe=recipe, **options))


def write_job(path: str | os.PathLike, recipe: str, **options) -> Path:
    """Render and atomically write an executable sbatch script; return its path."""
    text = render_job(recipe, **options)
    path = Path(path)
    with atomic_path(path, mode=0o777) as tmp:  # a job script is executable
        tmp.write_text(text, encoding="utf-8")
    return path


def _write_examples(out_dir: str | os.PathLike, names) -> list[Path]:
    # `medrl slurm`'s own parser, not the whole CLI's: the CLI imports this module.
    parser = Parser(prog="medrl")
    register(parser.add_subparsers(dest="command"))
    written = []
    for name in names:
        path = Path(out_dir) / name
        args = parser.parse_args(["slurm", *EXAMPLE_JOBS[name], "--out", str(path)])
        if args.func(args) != 0:
            raise SlurmJobError(f"could not render {name}")
        written.append(path)
    return written


def write_seed_jobs(out_dir: str | os.PathLike = "jobs") -> list[Path]:
    """Write the seed's named scripts (single_node_enhanced.sh, single_node_basic.sh) into out_dir."""
    return _write_examples(out_dir, SEED_JOBS)


def write_example_jobs(out_dir: str | os.PathLike = "jobs") -> list[Path]:
    """Write every script of EXAMPLE_JOBS (the seed's two and a multi-node one) into out_dir."""
    return _write_examples(out_dir, EXAMPLE_JOBS)


# ---- command line ----

def register(subparsers) -> None:
    """Add `medrl slurm` to the top-level parser."""
    p = subparsers.add_parser(
        "slurm", help="render an sbatch script: Ray cluster on N nodes, then medrl train/pipeline/rehearse",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="recipe name or YAML path passed to `medrl train`")
    p.add_argument("overrides", nargs="*", help="key=value overrides for the recipe (after --)")
    p.add_argument("--out", required=True, help="where to write the script, e.g. jobs/my_run.sh")
    p.add_argument("--nodes", type=int, default=1, help="Ray nodes (a judge node comes on top)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="0 on CPU nodes (no --gres then)")
    for opt in ("partition", "time", "account", "qos", "mem"):
        p.add_argument(f"--{opt}", help=f"#SBATCH --{opt}")
    p.add_argument("--cpus-per-task", type=int, help="#SBATCH --cpus-per-task (also Ray's --num-cpus)")
    p.add_argument("--job-name", help="default: medrl-<recipe>")
    p.add_argument("--output", help="Slurm log path pattern (default %%x-%%j.out)")
    p.add_argument("--workdir", help="cd here before anything else (default: the submit dir)")
    env = p.add_argument_group("environment activation (applied in this order)")
    env.add_argument("--module", dest="modules", action="append", default=[], help="module load NAME")
    env.add_argument("--conda", help="conda activate ENV")
    env.add_argument("--venv", help="source VENV/bin/activate")
    env.add_argument("--env-setup", help="source this file (anything else your cluster needs)")
    env.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                     help="export NAME=VALUE before Ray starts, so every Ray worker sees it (repeatable)")
    p.add_argument("--pipeline", action="store_true", help="run `medrl pipeline` instead of `medrl train`")
    p.add_argument("--rehearse", action="store_true",
                   help="run `medrl rehearse` (one CPU node): the recipe, your environment and the Ray "
                        "bootstrap checked before you queue for GPUs")
    judge = p.add_argument_group("VLM judge on its own node")
    judge.add_argument("--judge-node", action="store_true", help="serve --judge-model with vLLM")
    judge.add_argument("--judge-model")
    judge.add_argument("--judge-port", type=int, default=8000)
    judge.add_argument("--judge-wait", type=int, default=1800, help="seconds to wait for /health")
    judge.add_argument("--judge-arg", dest="judge_args", action="append", default=[],
                       help="extra `vllm serve` argument (repeatable)")
    ray = p.add_argument_group("Ray")
    ray.add_argument("--ray-port", default="auto", help="GCS port; auto: derived from the job id")
    ray.add_argument("--ray-wait", type=int, default=300,
                     help="seconds to wait for the head and every node to register")
    ray.add_argument("--ray-cpus", type=int, help="Ray --num-cpus per node")
    ray.add_argument("--ray-gpus", type=int,
                     help="Ray --num-gpus per node (default --gpus-per-node; logical GPUs for CPU recipes)")
    ray.add_argument("--ray-object-store", type=int, help="Ray --object-store-memory (bytes)")
    ray.add_argument("--ray-tmp", help="Ray --temp-dir (default /tmp/medrl-ray-$SLURM_JOB_ID)")
    ray.add_argument("--ray-start-arg", dest="ray_start_args", action="append", default=[],
                     help="extra `ray start` argument for every node (repeatable)")
    ray.add_argument("--ray-auth", choices=("token", "disabled"), default="token",
                     help="token: a fresh Ray auth token per job (default); disabled: no auth")
    hidden = argparse.SUPPRESS
    p.add_argument("--command", dest="inject_command", help=hidden)
    p.add_argument("--worker-start", help=hidden)
    p.add_argument("--simulate-workers", type=int, default=0, help=hidden)
    p.add_argument("--judge-command", help=hidden)
    p.set_defaults(func=_main)
    collect_overrides(p)


def _main(args: argparse.Namespace) -> int:
    names = {f.name for f in fields(SlurmJob)}
    options = {k: v for k, v in vars(args).items() if k in names and k != "recipe"}
    options["command"] = args.inject_command
    options["generated_by"] = shlex.join(["medrl", "slurm", *args.argv])
    try:
        path = write_job(args.out, args.recipe, **options)
    except SlurmJobError as exc:
        print(f"medrl slurm: error: {exc}", file=sys.stderr)
        return 2
    total = args.nodes + (1 if args.judge_node else 0)
    print(f"wrote {path} ({total} node(s), {args.gpus_per_node} GPU(s) per node); submit with: sbatch {shlex.quote(str(path))}")
    return 0

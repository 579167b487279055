"""The exact verl command line of one recipe stage, checked against verl's own config.

Keys come in order: what the recipe implies (data, model, resources, reward, run folder), the
CPU keys of `medrl.cpu.device_keys` for `device: cpu`, then the stage's own overrides,
which win. Every key is looked up in verl's composed Hydra config before anything launches.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from medrl.cpu.device_keys import cpu_values
from medrl.training.env import is_runtime_env_key, metrics_env, ray_env_vars, runtime_env_key
from medrl.training.recipes import Recipe, RecipeError, Stage
from medrl.training.verl_keys import check_overrides


class Text(str):
    """A value Hydra must keep a string: Ray wants str env vars, and Hydra reads `1` as int, `false` as bool."""


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def hydra_value(value: Any) -> str:
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
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if any(c in text for c in " ,[]{}()'\"=:\\$*") and not text.startswith(("/", "./")):
        return _quote(text)
    return text


def uses_critic(stage: Stage) -> bool:
    """Whether verl builds a critic for this PPO stage (its own rule: critic.enable, else GAE)."""
    enable = stage.overrides.get("critic.enable")
    if enable is not None:
        return bool(enable)
    return stage.overrides.get("algorithm.adv_estimator", "gae") == "gae"  # verl's default estimator is GAE


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
        if uses_critic(stage):
            # verl's critic model defaults to a placeholder path (~/models/deepseek-llm-7b-chat):
            # the critic starts from the policy's own weights, with a value head added by verl.
            keys["critic.model.path"] = model
        # On a Ray cluster that the job started (Slurm, RAY_ADDRESS), workers do not inherit the
        # driver's environment: medrl's variables (CPU platform, HF rollout module, threads) and
        # the metrics path of verl's file logger (it lives in the TaskRunner, a Ray worker) travel
        # in the job's runtime_env.
        for k, v in {**ray_env_vars(recipe.device), **metrics_env(out_dir)}.items():
            keys[runtime_env_key(k)] = Text(v)
        if recipe.reward.get("path"):
            keys["reward.custom_reward_function.path"] = recipe.reward["path"]
            keys["reward.custom_reward_function.name"] = recipe.reward.get("name", "compute_score")
        for k, v in (recipe.reward.get("kwargs") or {}).items():
            keys[f"+reward.custom_reward_function.reward_kwargs.{k}"] = v
        if recipe.device == "cpu":
            keys.update(cpu_values("ppo"))
            # Ray accepts logical GPUs on a GPU-less host; one per FSDP rank.
            keys["+ray_kwargs.ray_init.num_gpus"] = res["gpus_per_node"] * res["nnodes"]
        if os.environ.get("RAY_ADDRESS"):
            # Joining an existing cluster, Ray refuses resource sizes: `ray start` set them.
            keys.pop("ray_kwargs.ray_init.num_cpus", None)
            keys.pop("+ray_kwargs.ray_init.num_gpus", None)
            keys.pop("+ray_kwargs.ray_init.include_dashboard", None)
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
            keys.update(cpu_values("sft"))
    for k, v in stage.overrides.items():
        keys.pop(k.lstrip("+"), None)
        keys.pop("+" + k.lstrip("+"), None)
        # Ray refuses a runtime_env variable that is not a str (Hydra reads `480` as an int).
        keys[k] = Text(v) if is_runtime_env_key(k) and not isinstance(v, Text) else v
    missing = [k for k, v in keys.items() if v is None and k.startswith(("data.train_files", "model.path"))]
    if missing:
        raise RecipeError(f"{recipe.path}: stage {stage.name!r} has no value for {missing}")
    return keys


def build_command(recipe: Recipe, stage: Stage, out_dir: Path, **kwargs: Any) -> list[str]:
    """The exact verl command line for one stage (checked against verl's config)."""
    keys = stage_overrides(recipe, stage, out_dir, **kwargs)
    check_overrides(stage.trainer, list(keys))
    args = [f"{k}={hydra_value(v)}" for k, v in keys.items()]
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

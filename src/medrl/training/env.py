"""The environment medrl sets for a verl run, so that nothing is required in the user's shell.

Child processes inherit it: Ray workers (the local Ray cluster is started by the driver) and
torchrun ranks both see these variables, and `import verl` then imports medrl's CPU backend.
"""

from __future__ import annotations

import os
from typing import Mapping

from medrl.cpu.vllm_env import apply_engine_env

BACKEND_MODULE = "medrl.cpu.backend"


def run_env(device: str = "cpu", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of `base` (default: os.environ) with the variables a medrl run needs."""
    env = dict(os.environ if base is None else base)
    modules = [m for m in env.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    if BACKEND_MODULE not in modules:
        modules.append(BACKEND_MODULE)  # registers the "hf" rollout on GPU hosts too
    env["VERL_USE_EXTERNAL_MODULES"] = ",".join(modules)
    env.setdefault("WANDB_MODE", "disabled")  # no account, no network on the rehearsal machine
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")  # models are local folders; never reach for the hub
    env.setdefault("PYTHONUNBUFFERED", "1")  # progress lines reach the run log as they happen
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.setdefault("HYDRA_FULL_ERROR", "1")
    if device == "cpu":
        env["VERL_PLATFORM"] = "cpu"
        # The rollout sizes its KV cache with an engine argument (medrl.cpu.device_keys).
        apply_engine_env(env, kv_cache_gib=None)
        # vLLM's CPU platform turns the uni-process executor (medrl.cpu.device_keys) into a
        # separate worker process while V1 multiprocessing is on; off, the model runs in the engine
        # core: one process (~1 GB) less per rollout replica, measured the same seconds per step.
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # Several worker processes share a small CPU: one thread each avoids oversubscription.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
    return env


# Where a verl command line puts the variables every Ray worker of the job gets (its runtime_env).
RUNTIME_ENV_VARS = "ray_kwargs.ray_init.runtime_env.env_vars"


def runtime_env_key(name: str) -> str:
    """The verl key that sets variable `name` in the job's Ray runtime_env (`+ray_kwargs...env_vars.NAME`)."""
    return f"+{RUNTIME_ENV_VARS}.{name}"


def is_runtime_env_key(key: str) -> bool:
    """Whether a verl key sets a runtime_env variable (with or without Hydra's leading `+`)."""
    return key.lstrip("+").startswith(RUNTIME_ENV_VARS + ".")


def ray_env_vars(device: str = "cpu", base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables `run_env` sets, with the values it gives them: what Ray workers must also see."""
    full = run_env(device, base)
    return {k: full[k] for k in run_env(device, base={})}


def metrics_env(stage_dir: str | os.PathLike) -> dict[str, str]:
    """Point verl's file logger into the stage folder, also for a process that misses the exact path."""
    stage_dir = os.path.abspath(stage_dir)
    return {"VERL_FILE_LOGGER_PATH": os.path.join(stage_dir, "metrics.jsonl"),
            # Without VERL_FILE_LOGGER_PATH verl writes <root>/<project>/<experiment>.jsonl, root
            # defaulting to the worker's current directory: keep even that inside the run folder.
            "VERL_FILE_LOGGER_ROOT": stage_dir}


def trainer_mode_overrides(mode: str, module: str, env: Mapping[str, str] | None = None) -> list[str]:
    """verl keys that run a trainer medrl registers (`trainer.v1.trainer_mode=mode`, defined in `module`).

    verl looks the mode up in its trainer registry inside the TaskRunner, a Ray worker: the
    module must be imported there (`VERL_USE_EXTERNAL_MODULES`), and the trainer's own settings
    travel as environment variables in the job's runtime_env.
    """
    env = {"VERL_USE_EXTERNAL_MODULES": f"{BACKEND_MODULE},{module}", **(env or {})}
    return [f"trainer.v1.trainer_mode={mode}"] + [f"{runtime_env_key(k)}={v}" for k, v in env.items()]

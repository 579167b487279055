"""Checking verl keys: compose verl's own Hydra config and look every override up in it.

verl's config is composed from its installed YAML (`verl/trainer/config/`), the same files
`verl.trainer.main_ppo` and `verl.trainer.sft_trainer` read, so a key that passes here is a key
the trainer accepts. An unknown key fails with the nearest valid names (difflib).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
from pathlib import Path
from typing import Any

TRAINERS = {"sft": "sft_trainer_engine", "ppo": "ppo_trainer"}


class RecipeError(ValueError):
    """A recipe or an override is invalid; the message names the file/key and what is wrong."""


def verl_config_dir() -> Path:
    """verl's Hydra config folder, found without importing verl (that takes seconds)."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError("verl is not installed in this environment")
    return Path(list(spec.submodule_search_locations)[0]) / "trainer" / "config"


def compose_verl_config(trainer: str, overrides: list[str] | tuple[str, ...] = ()):
    """verl's config for a trainer ("sft" or "ppo") composed by Hydra with `key=value` overrides, as verl's launch does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        return compose(config_name=TRAINERS[trainer], overrides=list(overrides))


@functools.lru_cache(maxsize=4)
def verl_config(trainer: str):
    """Compose verl's default config for a trainer ("sft" or "ppo")."""
    return compose_verl_config(trainer)


def verl_default(trainer: str, key: str) -> Any:
    """verl's own default for a key (None when verl leaves it unset)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(verl_config(trainer), key.lstrip("+"), default=None,
                             throw_on_resolution_failure=False)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _has_key(cfg, key: str) -> bool:
    """Whether verl's config defines `key` (a `???` value counts as defined)."""
    from omegaconf import DictConfig, OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None, throw_on_resolution_failure=False) if parent else cfg
    if not isinstance(node, DictConfig):
        return False
    try:
        return node._get_node(leaf, throw_on_missing_key=False) is not None
    except Exception:  # a key OmegaConf refuses to look up is not a key verl has
        return False


def _all_keys(node, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            path = f"{prefix}{k}"
            keys.append(path)
            try:
                child = node._get_node(k)
            except Exception:  # interpolations that cannot resolve outside a run
                continue
            keys.extend(_all_keys(child, path + "."))
    return keys


def check_overrides(trainer: str, keys: list[str]) -> None:
    """Fail with the nearest valid names if any verl key is unknown to verl's config."""
    from omegaconf import DictConfig, OmegaConf

    cfg = verl_config(trainer)
    missing = "__medrl_missing__"
    valid = None
    errors = []
    for raw_key in keys:
        key = raw_key.lstrip("+~")
        parent, _, leaf = key.rpartition(".")
        found = missing if not _has_key(cfg, key) else True
        if raw_key.startswith("+"):
            # Adding keys is fine inside a mapping (override_config, custom_reward_function...),
            # unless the first new segment is a near-miss of an existing sibling (a typo).
            parts = key.split(".")
            depth = len(parts) - 1
            while depth > 0:
                node = OmegaConf.select(cfg, ".".join(parts[:depth]), default=None, throw_on_resolution_failure=False)
                if node is not None:
                    break
                depth -= 1
            node = cfg if depth == 0 else node
            if isinstance(node, DictConfig) and (
                depth == len(parts) - 1 or not difflib.get_close_matches(parts[depth], list(node.keys()), cutoff=0.8)
            ):
                continue
        elif found != missing:
            continue
        valid = valid or _all_keys(cfg)
        siblings = [k for k in valid if k.rpartition(".")[0] == parent]
        by_leaf = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=3, cutoff=0.6)
        near = [f"{parent}.{x}" if parent else x for x in by_leaf]
        near += [k for k in difflib.get_close_matches(key, valid, n=3, cutoff=0.6) if k not in near]
        if not near and leaf:
            near = [k for k in valid if k.endswith("." + leaf)]
        near = near[:3]
        errors.append(f"unknown verl key {raw_key!r} for the {trainer} trainer; nearest valid: {near or 'none'}")
    if errors:
        raise RecipeError("\n".join(errors) + "\n(prefix a key with + to add one inside a mapping verl leaves open)")

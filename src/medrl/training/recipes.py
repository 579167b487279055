"""Recipes: a small YAML layer over verl's own Hydra config (model, data, reward, resources, stages).

A recipe names the data, the model, the reward, the resources and a chain of stages; each
stage is one verl trainer (`sft` = `verl.trainer.sft_trainer` under torchrun, `ppo` =
`verl.trainer.main_ppo`) plus its verl overrides, written as verl's own dotted keys.
`medrl.training.verl_command` turns a stage into the exact command line.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medrl.training.verl_keys import TRAINERS, RecipeError

REPO_ROOT = Path(__file__).resolve().parents[3]
# Recipe-level keys a user may override on the command line (everything else is a verl key).
RECIPE_KEYS = ("model", "device", "resources.", "name")
# The recipe's own `data:` entries; any other `data.X` is verl's (e.g. data.max_prompt_length).
RECIPE_DATA = ("train", "val", "sft_train", "sft_val", "image_key")
# The recipe's own `reward:` entries; any other `reward.X` is verl's (e.g. reward.reward_manager.name).
RECIPE_REWARD = ("path", "name", "kwargs")


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

    @property
    def reward_spec(self) -> Any:
        """The reward spec the recipe gives its reward (`reward.kwargs.spec`), None without one."""
        return reward_spec(self.reward)

    def stage(self, name: str | None = None) -> Stage:
        """The named stage, or the last one (the RL stage of a warm-up chain)."""
        if name is None:
            return self.stages[-1]
        for st in self.stages:
            if st.name == name:
                return st
        raise RecipeError(f"{self.path}: no stage {name!r}; stages are {[s.name for s in self.stages]}")


def reward_spec(reward: dict[str, Any] | None) -> Any:
    """The reward spec of a recipe's `reward:` mapping (`kwargs.spec`): the one place that knows where it sits."""
    return ((reward or {}).get("kwargs") or {}).get("spec")


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
    if isinstance(raw.get("stages"), list):
        raw["stages"] = [_stage_from(st, path, seen) for st in raw["stages"]]
    return raw


def _stage_from(entry: Any, path: Path, seen: tuple) -> Any:
    """A stage written as `{from: other_recipe.yaml, stage: NAME, init_from: ...}`: that recipe's stage.

    A chain of recipes (SFT warm-up, then GRPO) then runs each stage exactly as its own recipe
    does, and a rehearsal of the chain proves the recipes it is made of.
    """
    if not isinstance(entry, dict) or "from" not in entry:
        return entry
    source = _read(find_recipe(path.parent / entry["from"]), seen + (path,))
    stages = [st for st in source.get("stages") or [] if isinstance(st, dict)]
    name = entry.get("stage")
    picked = [st for st in stages if st.get("name", st.get("trainer")) == name] if name else stages
    if len(picked) != 1:
        raise RecipeError(f"{path}: stage from {entry['from']!r} needs `stage:` naming one of "
                          f"{[st.get('name', st.get('trainer')) for st in stages]}")
    extra = {k: v for k, v in entry.items() if k not in ("from", "stage")}
    return _deep_merge(picked[0], extra)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe (following `extends:`) and check its structure."""
    path = find_recipe(name_or_path)
    raw = _read(path)
    return recipe_from_raw(raw, path)


def recipe_from_raw(raw: dict, path: Path) -> Recipe:
    """A checked Recipe from a recipe mapping (`extends:` already merged); `path` names it in errors."""
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


def resolve_path(value: Any, run_dir: Path | None) -> Any:
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
    """A copy of `recipe` with ${run} expanded (also in stage overrides) and data/reward/model paths made absolute."""
    r = copy.deepcopy(recipe)
    r.data = {k: resolve_path(v, run_dir) for k, v in r.data.items()}
    if r.model != "tiny":
        r.model = resolve_path(r.model, run_dir)
    if r.reward.get("path"):
        r.reward["path"] = resolve_path(r.reward["path"], run_dir)
    r.reward["kwargs"] = {k: resolve_path(v, run_dir) for k, v in (r.reward.get("kwargs") or {}).items()}
    for st in r.stages:  # e.g. trainer.validation_data_dir: ${run}/grpo/validation
        st.overrides = {k: resolve_path(v, run_dir) if isinstance(v, str) and "${run}" in v else v
                        for k, v in st.overrides.items()}
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
        section, _, rest = key.partition(".")
        if key.startswith(RECIPE_KEYS) or key in ("model", "device", "name") or (
            section == "data" and rest in RECIPE_DATA) or (section == "reward" and rest.split(".")[0] in RECIPE_REWARD):
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
    return recipe_from_raw(raw, recipe.path)

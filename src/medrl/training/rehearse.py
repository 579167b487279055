"""`medrl rehearse RECIPE`: a GPU recipe, as written, rehearsed on this CPU with the tiny model.

What changes, and nothing else:
- the model (a random-init tiny Qwen2.5-VL built offline), the device (cpu) and the resources
  (one node; one CPU rank and one vLLM replica, or `ranks` of each for real FSDP sharding);
- sizes: batches, micro-batches, response length, rollout n, tensor parallel size, steps
  (every stage runs `STEPS` steps, saves a checkpoint and validates on a few rows);
- keys that exist only on a device (`medrl.cpu.device_keys`: flash-attn, CUDA graphs...);
- data files the recipe names but this machine does not have: the bundled sample, prepared
  for the task the reward spec routes (grounding or report).

Every change is listed with its old value, its new value and why. The prompt-length limit,
the reward, the data rows and every other verl key stay as written, so a rehearsal fails where
the GPU launch would: a key verl rejects, a row the processor cannot load, a prompt over the
limit or a data_source with no reward route (a preflight through verl's own RLHFDataset, before
any trainer starts), and a reward that raises (the real trainer's first step).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from medrl.rewards.tasks import task_in
from medrl.cpu.device_keys import CPU_KEYS
from medrl.training.recipes import REPO_ROOT, Recipe, RecipeError, recipe_from_raw, resolve_paths
from medrl.training.verl_keys import verl_default

STEPS = 2
RANKS = 1  # one FSDP rank and one vLLM replica: the fastest start on a small CPU
SAMPLE = "examples/sample/sample.json"
# The bundled sample's records per task (the `medrl prepare` arguments the main job uses too).
SAMPLE_TASKS = {
    "grounding": ["grounding", SAMPLE, "--dataset_filter", "vindr-cxr", "chest-imagenome"],
    "report": ["report", SAMPLE, "--dataset_filter", "mimic-cxr"],
}


@dataclass(frozen=True)
class Change:
    """One key the rehearsal changed: where ("recipe" or a stage name), old and new value, why."""

    where: str
    key: str
    old: Any
    new: Any
    why: str


def _at_most(limit: int) -> Callable[[Any], Any]:
    return lambda old: min(int(old), limit) if isinstance(old, (int, float)) and old > 0 else limit


# key -> (new value, or a function of the old one; why). Only sizes: what a CPU can hold and run
# in minutes. Lengths of prompts and SFT sequences stay: they are what a GPU run can fail on.
PPO_SIZES: dict[str, tuple[Any, str]] = {
    "data.train_batch_size": (4, "4 prompts a step"),
    "data.val_max_samples": (8, "validate on 8 rows"),
    "data.max_response_length": (_at_most(48), "short answers: a random tiny model writes noise"),
    "actor_rollout_ref.rollout.n": (_at_most(2), "2 samples per prompt still make a group"),
    "actor_rollout_ref.actor.ppo_mini_batch_size": (2, "two updates per step"),
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": (2, "micro-batches that fit the batch"),
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": (4, "micro-batches that fit the batch"),
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": (4, "micro-batches that fit the batch"),
    "trainer.total_training_steps": (STEPS, f"{STEPS} steps"),
    "trainer.save_freq": (1, "a checkpoint every step, as a long run saves"),
    "trainer.test_freq": (STEPS, "validate at the last step"),
    "trainer.critic_warmup": (_at_most(0), "a critic warm-up longer than the rehearsal would leave the actor idle"),
}
CRITIC_SIZES: dict[str, tuple[Any, str]] = {
    "critic.ppo_micro_batch_size_per_gpu": (2, "micro-batches that fit the batch"),
}
SFT_SIZES: dict[str, tuple[Any, str]] = {
    "data.train_batch_size": (4, "4 conversations a step"),
    "data.micro_batch_size_per_gpu": (2, "micro-batches that fit the batch"),
    "data.val_max_samples": (8, "validate on 8 rows"),
    "trainer.total_training_steps": (STEPS, f"{STEPS} steps"),
    "trainer.test_freq": (STEPS, "validate at the last step"),
}


def _task(recipe: Recipe) -> str:
    """The sample task a recipe trains on: its reward spec's routes, else its name or data paths."""
    spec = recipe.reward_spec
    routes = Path(spec).read_text() if spec and Path(spec).is_file() else str(spec or "")
    # The sample's rows must have a route: its data sources by name, not any route about that task.
    routed = next((task for task in SAMPLE_TASKS if f"medrl/{task}" in routes), None)
    task = routed or task_in(" ".join([recipe.name, *map(str, recipe.data.values())]), SAMPLE_TASKS)
    if task:
        return task
    raise RecipeError(f"{recipe.path}: its data files are not on this machine and its reward spec routes "
                      f"neither medrl/grounding nor medrl/report (nor do its name or data paths say), so there "
                      f"is no bundled sample to rehearse with; pass the data (data.train=... data.val=...)")


def rehearsal(recipe: Recipe, run_dir: Path, ranks: int = RANKS) -> tuple[Recipe, list[Change]]:
    """The CPU rehearsal of `recipe` and every change it makes (`recipe` as loaded, overrides applied)."""
    raw = copy.deepcopy(recipe.raw)
    changes: list[Change] = []

    def change(where: str, key: str, old: Any, new: Any, why: str) -> None:
        if old != new:
            changes.append(Change(where, key, old, new, why))

    change("recipe", "model", recipe.model, "tiny", "a random-init tiny Qwen2.5-VL, built offline (no hub, no GPU)")
    change("recipe", "device", recipe.device, "cpu", "this machine has no GPU")
    for key, new, why in (("nnodes", 1, "one machine"),
                          ("gpus_per_node", ranks, f"{ranks} CPU rank(s), {ranks} vLLM replica(s)")):
        change("recipe", f"resources.{key}", recipe.resources.get(key), new, why)
    raw.update(model="tiny", device="cpu")
    raw["resources"] = {**(raw.get("resources") or {}), "nnodes": 1, "gpus_per_node": ranks}

    resolved = resolve_paths(recipe, run_dir)
    # Files the run makes itself (`${run}/...`, from the recipe's own `prepare`) are not missing.
    missing = {k: v for k, v in resolved.data.items()
               if isinstance(v, str) and "${run}" not in str(recipe.data.get(k)) and not Path(v).is_file()}
    if missing:
        task = _task(resolved)
        names = {"train": "train", "val": "val", "sft_train": "sft_train", "sft_val": "sft_val"}
        prepare = [*SAMPLE_TASKS[task], "--val_fraction", "0.2", "--sft"]
        raw["prepare"] = [prepare]
        raw["data"] = dict(raw.get("data") or {})
        for key, path in missing.items():
            new = f"${{run}}/data/{names.get(key, key)}.parquet"
            raw["data"][key] = new
            change("recipe", f"data.{key}", recipe.data.get(key), new,
                   f"not on this machine: the bundled sample ({task}) instead")

    for st in raw["stages"]:
        name = st.get("name", st["trainer"])
        trainer = st["trainer"]
        own = dict(st.get("overrides") or {})
        sizes = dict(SFT_SIZES if trainer == "sft" else PPO_SIZES)
        if trainer == "ppo" and own.get("algorithm.adv_estimator",
                                        verl_default("ppo", "algorithm.adv_estimator")) == "gae":
            sizes.update(CRITIC_SIZES)
        for key, (new, why) in sizes.items():
            old = own.get(key, verl_default(trainer, key))
            value = new(old) if callable(new) else new
            change(name, key, old, value, why)
            own[key] = value
        if trainer == "ppo":
            for key, value, why in dapo_changes(own):
                change(name, key.lstrip("+"), own.get(key), value, why)
                own[key] = value
            # A GPU recipe's tensor-parallel size names GPUs; on a CPU each replica is one process.
            key = "actor_rollout_ref.rollout.tensor_model_parallel_size"
            own.pop(key, None)
        for key, setting in CPU_KEYS[trainer].items():
            old = own.pop(key, own.pop(key.lstrip("+"), verl_default(trainer, key)))
            change(name, key.lstrip("+"), old, setting.value, setting.why)
        # Offloading to host memory on a host pins memory, which needs an accelerator.
        for key in [k for k in own if k.endswith(("param_offload", "optimizer_offload"))]:
            change(name, key, own[key], False, "offload to host memory on a host: pinning needs an accelerator")
            own[key] = False
        st["overrides"] = own
    return recipe_from_raw(raw, recipe.path), changes


def dapo_changes(own: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(key, new value, why) for the DAPO keys of a rehearsal's PPO stage (`own`: sizes already applied)."""
    def written(bare: str) -> str | None:  # the key as the recipe writes it, with or without `+`
        return next((k for k in own if k.lstrip("+") == bare), None)

    out = []
    if own.get("algorithm.filter_groups.enable") is True:
        out.append(("algorithm.filter_groups.enable", False,
                    "a random-init model scores every answer alike: no group has a spread, and verl 0.9.1 "
                    "would generate forever to fill a batch"))
    limit, length = written("reward.reward_kwargs.max_resp_len"), own.get("data.max_response_length")
    if limit and isinstance(own[limit], int) and isinstance(length, int):
        out.append((limit, length, "the overlong penalty follows the rehearsal's response length"))
        buffer = written("reward.reward_kwargs.overlong_buffer_cfg.len")
        if buffer and isinstance(own[buffer], int) and own[limit] > 0:
            out.append((buffer, max(1, own[buffer] * length // own[limit]),
                        "the overlong buffer keeps its share of the shorter response"))
    return out


def format_changes(changes: list[Change]) -> str:
    """A plain-text table of the changes (stage, key, old -> new, why)."""
    rows = [(c.where, c.key, _short(c.old), _short(c.new), c.why) for c in changes]
    widths = [max(len(r[i]) for r in rows) if rows else 0 for i in range(4)]
    lines = [f"{'where':<{widths[0]}}  {'key':<{widths[1]}}  {'old':<{widths[2]}}  {'new':<{widths[3]}}  why"]
    lines += [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}"
              for r in rows]
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = "(unset)" if value is None else str(value)
    if text.startswith(str(REPO_ROOT)):
        text = text[len(str(REPO_ROOT)) + 1:]
    return text if len(text) <= 48 else "..." + text[-45:]


class RehearsalError(RecipeError):
    """The rehearsal found what the GPU launch would fail on; the message lists it."""


def preflight(recipe: Recipe, model_dir: str, echo: Callable[[str], None] = print) -> None:
    """Load every RL row through verl's RLHFDataset with the model's processor, as the trainer will.

    Fails on rows the processor cannot load, data sources with no reward route and, unless the
    stage lets verl drop them (`data.filter_overlong_prompts`), prompts over `data.max_prompt_length`.
    """
    from medrl.data.check import P_LENGTH, check_file, print_report

    spec = recipe.reward_spec
    failures = []
    for st in (s for s in recipe.stages if s.trainer == "ppo"):
        limit = st.overrides.get("data.max_prompt_length", verl_default("ppo", "data.max_prompt_length"))
        drops = bool(st.overrides.get("data.filter_overlong_prompts",
                                      verl_default("ppo", "data.filter_overlong_prompts")))
        for split in ("train", "val"):
            path = recipe.data.get(split)
            if not path or (split == "val" and path == recipe.data.get("train")):
                continue
            echo(f"[preflight] {st.name}: {split} rows through verl's RLHFDataset ({path})")
            report = check_file(path, processor=model_dir, max_prompt_length=limit, reward_spec=spec, progress=False)
            if drops and P_LENGTH in report["problems"]:
                n = report["problems"].pop(P_LENGTH)["count"]
                echo(f"[preflight] note: verl will drop {n} {split} rows over max_prompt_length={limit} "
                     f"(data.filter_overlong_prompts)")
            if report["problems"]:
                print_report(report)
                failures.append(f"{split} ({path}): " + ", ".join(
                    f"{name}: {p['count']} rows, e.g. {p['example']}" for name, p in report["problems"].items()))
    if failures:
        raise RehearsalError("the GPU launch would fail on its data:\n  " + "\n  ".join(failures))
    if any(s.trainer == "ppo" for s in recipe.stages):
        reward_smoke(recipe, echo)


# What a model may answer at step 1: nothing, the reference itself, and text with no answer tags.
SMOKE_ANSWERS = ("", "<think>...</think><answer>{truth}</answer>", "I cannot tell.")


def reward_smoke(recipe: Recipe, echo: Callable[[str], None] = print, rows_per_source: int = 4) -> None:
    """Call the recipe's reward as verl will, on real training rows, before any trainer starts.

    A reward that raises would stop the GPU run at its first step; here it stops the rehearsal
    in seconds, naming the row, the answer and the exception.
    """
    import pyarrow.parquet as pq

    from medrl.rewards.user_reward import load_reward_file

    path, name = recipe.reward.get("path"), recipe.reward.get("name", "compute_score")
    if not path or not recipe.data.get("train"):
        return
    fn = load_reward_file(path, name).raw
    kwargs = dict(recipe.reward.get("kwargs") or {})
    seen: dict[str, int] = {}
    for i, row in enumerate(pq.read_table(recipe.data["train"]).to_pylist()):
        source = str(row.get("data_source"))
        if seen.get(source, 0) >= rows_per_source:
            continue
        seen[source] = seen.get(source, 0) + 1
        truth = (row.get("reward_model") or {}).get("ground_truth")
        for answer in (a.replace("{truth}", str(truth)) for a in SMOKE_ANSWERS):
            try:
                fn(data_source=source, solution_str=answer, ground_truth=truth,
                   extra_info=row.get("extra_info"), **kwargs)
            except Exception as exc:  # whatever it raises, verl's first step would raise it too
                raise RehearsalError(f"the reward {path}:{name} raises on training row {i} ({source}) with "
                                     f"answer {answer[:80]!r}: {type(exc).__name__}: {exc}") from exc
    echo(f"[preflight] reward {Path(path).name}:{name} scored {sum(seen.values())} rows x "
         f"{len(SMOKE_ANSWERS)} answers without raising")

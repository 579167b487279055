"""The RL algorithm of a PPO stage: the verl keys that choose it, and the combinations that break it.

verl 0.9.1 selects GRPO, GSPO, DAPO, Dr. GRPO, RLOO, REINFORCE++ ... with a handful of keys
(`ALGORITHM_KEYS`) and accepts them in any combination, including ones that do nothing, or that
cannot finish a step, and says so late (a log line on the cluster) or never. `check_algorithm`
names each such combination with its numbers, from the stage's overrides and verl's defaults;
`medrl train` / `medrl pipeline` (also with --dry-run) and `medrl rehearse` run it on every PPO
stage before anything launches: an error stops the launch, a warning or a note is printed.
Each rule says which verl 0.9.1 code it follows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from medrl.training.recipes import Recipe, RecipeError, Stage
from medrl.training.verl_keys import verl_default

ERROR, WARNING, NOTE = "error", "warning", "note"

ACTOR = "actor_rollout_ref.actor."
OVERLONG = "reward.reward_kwargs.overlong_buffer_cfg."
# Keys that choose the algorithm (an entry ending in "." or "_" is a prefix): what the dry run lists.
ALGORITHM_KEYS = (
    "algorithm.adv_estimator", "algorithm.norm_adv_by_std_in_grpo", "algorithm.filter_groups.",
    "algorithm.use_kl_in_reward", "algorithm.kl_ctrl.", "algorithm.kl_penalty", "algorithm.gamma",
    ACTOR + "policy_loss.", ACTOR + "loss_agg_mode", ACTOR + "loss_scale_factor", ACTOR + "clip_ratio",
    ACTOR + "clip_ratio_", ACTOR + "use_kl_loss", ACTOR + "kl_loss_", "actor_rollout_ref.rollout.n",
    "reward.reward_manager.name", "reward.reward_kwargs.",
)
# Estimators whose baseline is the other answers to the same prompt (core_algos.py: they group by `index`).
GROUP_ESTIMATORS = frozenset({"grpo", "grpo_vectorized", "grpo_passk", "gdpo", "rloo", "rloo_vectorized",
                              "reinforce_plus_plus_baseline", "opo"})
# The only estimators that read algorithm.norm_adv_by_std_in_grpo: compute_advantage passes it to
# `grpo`, and `grpo_passk` reads it from the config; the generic path gives the others nothing.
STD_FLAG_ESTIMATORS = frozenset({"grpo", "grpo_passk"})
# Policy losses that take clip_ratio_low/high when set and fall back to clip_ratio only when they are null.
LOW_HIGH_LOSSES = frozenset({"vanilla", "gspo", "cispo"})
GSPO_AGG = "seq-mean-token-mean"
GSPO_CLIP_MAX = 0.01  # a sequence ratio stays within ~1e-3 of 1; verl's GSPO examples clip at 3e-4 / 4e-4
OVERLONG_FIELDS = ("enable", "len", "penalty_factor", "log")  # what verl's dapo reward manager reads
# verl's V1 ReplayBuffer metrics of a DAPO run (replay_buffer.py), read back to measure the spread.
EVICTED = "training/filter_groups/evicted_samples"
SURPLUS = "training/filter_groups/discarded_surplus_samples"


@dataclass(frozen=True)
class Finding:
    """One combination worth a word before launch: its level (error/warning/note), keys and explanation."""

    level: str
    keys: tuple[str, ...]
    message: str


Lookup = Callable[[str], Any]


def lookup(overrides: Mapping[str, Any], default: Callable[[str], Any]) -> Lookup:
    """The value verl will run with: the stage's override (with or without `+`), else verl's default."""
    def value(key: str) -> Any:
        for k in (key, "+" + key):
            if k in overrides:
                return overrides[k]
        return default(key)
    return value


def algorithm_keys(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's own overrides that choose its algorithm, in the recipe's order."""
    def chooses(key: str) -> bool:
        return any(key == p or (p.endswith((".", "_")) and key.startswith(p)) for p in ALGORITHM_KEYS)

    return {k: v for k, v in overrides.items() if chooses(k.lstrip("+"))}


def algorithm_name(value: Lookup) -> str:
    """A short name for the algorithm the keys select (GSPO, DAPO, Dr. GRPO, RLOO, REINFORCE++, ...)."""
    estimator = str(value("algorithm.adv_estimator"))
    base = {"gae": "PPO (GAE)", "grpo": "GRPO", "rloo": "RLOO", "reinforce_plus_plus": "REINFORCE++",
            "reinforce_plus_plus_baseline": "REINFORCE++ (group baseline)"}.get(estimator, estimator)
    if estimator in STD_FLAG_ESTIMATORS and value("algorithm.norm_adv_by_std_in_grpo") is False:
        base = "Dr. GRPO"
    if value(ACTOR + "policy_loss.loss_mode") == "gspo":
        base = "GSPO" if estimator == "grpo" else f"GSPO loss, {base} advantages"
    return f"DAPO ({base} + dynamic sampling)" if _on(value("algorithm.filter_groups.enable")) else base


def _on(flag: Any) -> bool:
    return flag is True or str(flag).lower() == "true"


def check_algorithm(overrides: Mapping[str, Any], default: Callable[[str], Any], spread: float | None = None,
                    train_rows: int | None = None) -> list[Finding]:
    """Every questionable algorithm combination of one PPO stage (`overrides`; verl's `default` for the rest).

    `spread` is the measured fraction of groups whose answers score differently (a prior DAPO run's),
    `train_rows` the train set's size: both sharpen dynamic sampling's arithmetic when known.
    """
    value = lookup(overrides, default)
    found = [*_group_rules(value), *_loss_rules(overrides, value), *_overlong_rules(value)]
    if _on(value("algorithm.filter_groups.enable")):
        found += _filter_rules(value)
        found.append(dapo_arithmetic(int(value("data.train_batch_size")), int(value("actor_rollout_ref.rollout.n")),
                                     int(value("algorithm.filter_groups.max_inflight_gen_batches") or 1),
                                     spread, train_rows))
    return found


def _group_rules(value: Lookup) -> Iterable[Finding]:
    estimator, n = str(value("algorithm.adv_estimator")), int(value("actor_rollout_ref.rollout.n"))
    if estimator in GROUP_ESTIMATORS and n < 2:
        yield Finding(ERROR, ("algorithm.adv_estimator", "actor_rollout_ref.rollout.n"),
                      f"adv_estimator={estimator} measures each answer against the other answers to the same prompt, "
                      f"but rollout.n={n}: a group of one has no baseline and verl uses the raw reward as the "
                      f"advantage. Set rollout.n >= 2, or use reinforce_plus_plus (a batch-wide baseline).")
    if value("algorithm.norm_adv_by_std_in_grpo") is False and estimator not in STD_FLAG_ESTIMATORS:
        yield Finding(ERROR, ("algorithm.norm_adv_by_std_in_grpo", "algorithm.adv_estimator"),
                      f"norm_adv_by_std_in_grpo=False (Dr. GRPO) does nothing with adv_estimator={estimator}: verl "
                      f"0.9.1 reads it in the {' and '.join(sorted(STD_FLAG_ESTIMATORS))} estimators only. Use "
                      f"adv_estimator=grpo for Dr. GRPO, or drop the flag.")
    if _on(value("algorithm.use_kl_in_reward")) and _on(value(ACTOR + "use_kl_loss")):
        yield Finding(WARNING, ("algorithm.use_kl_in_reward", ACTOR + "use_kl_loss"),
                      f"KL is both subtracted from the reward (algorithm.kl_ctrl.kl_coef="
                      f"{value('algorithm.kl_ctrl.kl_coef')}) and added to the loss (actor.kl_loss_coef="
                      f"{value(ACTOR + 'kl_loss_coef')}): the policy is pulled to the reference twice. verl only "
                      f"prints a NOTICE; keep one (GRPO-style recipes: the loss).")
    if _on(value(ACTOR + "use_kl_loss")) and not float(value(ACTOR + "kl_loss_coef") or 0):
        yield Finding(WARNING, (ACTOR + "use_kl_loss", ACTOR + "kl_loss_coef"),
                      "use_kl_loss=True with kl_loss_coef=0: verl runs the reference model's forward pass every "
                      "step for a term that weighs nothing. Set use_kl_loss=False, or a coefficient.")


def _loss_rules(overrides: Mapping[str, Any], value: Lookup) -> Iterable[Finding]:
    mode, agg = str(value(ACTOR + "policy_loss.loss_mode")), str(value(ACTOR + "loss_agg_mode"))
    low, high = value(ACTOR + "clip_ratio_low"), value(ACTOR + "clip_ratio_high")
    if mode == "gspo" and agg != GSPO_AGG:
        level = WARNING if agg == "token-mean" else ERROR
        effect = ("weights each answer by its length" if agg == "token-mean"
                  else "multiplies the sequence ratio's gradient by the answer's length")
        yield Finding(level, (ACTOR + "policy_loss.loss_mode", ACTOR + "loss_agg_mode"),
                      f"loss_mode=gspo takes one importance ratio per answer, but loss_agg_mode={agg} {effect}; "
                      f"GSPO's objective is one term per answer: loss_agg_mode={GSPO_AGG}.")
    if mode == "gspo" and max(float(low or 0), float(high or 0)) > GSPO_CLIP_MAX:
        yield Finding(WARNING, (ACTOR + "clip_ratio_low", ACTOR + "clip_ratio_high"),
                      f"loss_mode=gspo clips a sequence ratio (the geometric mean of its token ratios, within ~1e-3 "
                      f"of 1) at [1-{low}, 1+{high}]: token-level bounds that never bind. GSPO clips at about "
                      f"3e-4 / 4e-4 (recipes/gspo_grounding.yaml).")
    if low is not None and high is not None and float(high) < float(low):
        yield Finding(WARNING, (ACTOR + "clip_ratio_low", ACTOR + "clip_ratio_high"),
                      f"clip_ratio_high={high} < clip_ratio_low={low}: a token whose probability rises is held "
                      f"tighter than one that falls, the opposite of DAPO's clip-higher (0.2 / 0.28).")
    if (any(k.lstrip("+") == ACTOR + "clip_ratio" for k in overrides) and mode in LOW_HIGH_LOSSES
            and low is not None and high is not None):
        yield Finding(ERROR, (ACTOR + "clip_ratio",),
                      f"actor.clip_ratio={value(ACTOR + 'clip_ratio')} is not used: loss_mode={mode} clips at "
                      f"clip_ratio_low={low} / clip_ratio_high={high} (verl sets both to 0.2) and reads clip_ratio "
                      f"only when they are null. Set clip_ratio_low and clip_ratio_high instead.")
    if agg == "seq-mean-token-sum-norm" and value(ACTOR + "loss_scale_factor") is None:
        yield Finding(WARNING, (ACTOR + "loss_agg_mode", ACTOR + "loss_scale_factor"),
                      f"loss_agg_mode=seq-mean-token-sum-norm with loss_scale_factor unset divides by each "
                      f"micro-batch's padded width, which varies from batch to batch; set it to "
                      f"data.max_response_length ({value('data.max_response_length')}) for Dr. GRPO's constant.")


def _filter_rules(value: Lookup) -> Iterable[Finding]:
    n, metric = int(value("actor_rollout_ref.rollout.n")), value("algorithm.filter_groups.metric")
    key = "algorithm.filter_groups.enable"
    if n < 2:
        yield Finding(ERROR, (key, "actor_rollout_ref.rollout.n"),
                      f"filter_groups drops groups whose answers all score the same, but rollout.n={n}: verl "
                      f"filters only groups of more than one answer, so nothing is ever filtered. Set rollout.n >= 2.")
    if not metric:
        yield Finding(ERROR, (key, "algorithm.filter_groups.metric"),
                      "filter_groups.metric is empty: verl stops at start ('algorithm.filter_groups.metric must be "
                      "set'). Use 'reward' (the score the advantage uses) or a key the reward returns.")
    elif metric != "reward":
        yield Finding(NOTE, ("algorithm.filter_groups.metric",),
                      f"filter_groups.metric={metric} is read from the reward's returned dict; a reward without "
                      f"that key stops the first step ('Finished groups are missing DAPO metric').")
    if value("trainer.v1.sampler.custom_sampler.path") and value("trainer.v1.sampler.custom_sampler.name"):
        yield Finding(ERROR, (key, "trainer.v1.sampler.custom_sampler.name"),
                      f"filter_groups is on, but trainer.v1.sampler.custom_sampler="
                      f"{value('trainer.v1.sampler.custom_sampler.name')}: verl 0.9.1 passes no filter to a "
                      f"custom sampler, so no group would be filtered. Drop one of the two.")
    if value("trainer.use_v1") is False:
        yield Finding(ERROR, (key, "trainer.use_v1"),
                      "filter_groups is on, but trainer.use_v1=False: verl 0.9.1's legacy trainer has no dynamic "
                      "sampling and ignores the key.")
    if _on(value("reward.reward_model.enable")) and not _on(value("reward.reward_model.enable_resource_pool")):
        yield Finding(ERROR, (key, "reward.reward_model.enable_resource_pool"),
                      "filter_groups needs each group's reward while sampling; a colocated reward model scores "
                      "after sampling (verl asserts at start). Set reward.reward_model.enable_resource_pool=True.")
    cap = value("algorithm.filter_groups.max_num_gen_batches")
    if cap and int(cap) > 0:
        yield Finding(WARNING, ("algorithm.filter_groups.max_num_gen_batches",),
                      f"filter_groups.max_num_gen_batches={cap} is ignored by verl 0.9.1 (its V1 ReplayBuffer "
                      f"logs so and generates with no cap); max_inflight_gen_batches bounds prompts in flight only.")
    gen = value("data.gen_batch_size")
    if gen not in (None, 1):
        yield Finding(WARNING, ("data.gen_batch_size",),
                      f"data.gen_batch_size={gen} is overridden to 1 with filter_groups on: verl refills one prompt "
                      f"at a time (the old DAPO recipe's gen batch = k x train batch does not apply).")


def dapo_arithmetic(batch: int, n: int, inflight: int, spread: float | None = None,
                    train_rows: int | None = None) -> Finding:
    """What dynamic sampling costs a step: prompts generated for `batch` groups with a score spread.

    verl 0.9.1's sync ReplayBuffer keeps generating until `batch` finished groups have a spread
    (it never gives up: max_num_gen_batches is ignored), at most `inflight` x `batch` prompts at a
    time. With a fraction p of groups having a spread a step generates about batch / p prompts.
    """
    keys = ("algorithm.filter_groups.enable", "data.train_batch_size", "actor_rollout_ref.rollout.n")
    head = (f"dynamic sampling: each step needs data.train_batch_size={batch} groups whose rollout.n={n} answers "
            f"score differently; verl 0.9.1 generates until it has them, with no cap, at most "
            f"max_inflight_gen_batches x {batch} = {inflight * batch} prompts at a time.")
    whole = (f" The train set has {train_rows} rows: below p = {batch / train_rows:.2f} a step reads more "
             f"than all of it." if train_rows else "")
    if spread is None:
        return Finding(NOTE, keys, f"{head} With a fraction p of groups having a spread a step generates about "
                                   f"{batch}/p prompts ({batch * n}/p answers): p=0.5 -> {2 * batch} prompts, p=0.1 -> "
                                   f"{10 * batch}; p=0 (every answer fails alike, or all succeed alike) never ends "
                                   f"the step.{whole} A prior DAPO run in the same folder gives p.")
    if spread <= 0:
        return Finding(ERROR, keys, f"{head} In the earlier run no group had a spread (p=0): the step would never "
                                    f"end. The data set is too easy or too hard for this model; filter it, or turn "
                                    f"dynamic sampling off.")
    prompts = round(batch / spread)
    text = (f"{head} Measured p={spread:.2f} (earlier run): about {prompts} prompts ({prompts * n} answers) a step, "
            f"{1 / spread:.1f}x GRPO's generation.")
    if train_rows and prompts > train_rows:
        return Finding(WARNING, keys, f"{text} That is more than the train set's {train_rows} rows: every step "
                                      f"reads the whole set again; the set is too easy or too hard for this model.")
    return Finding(NOTE, keys, text)


def _overlong_rules(value: Lookup) -> Iterable[Finding]:
    cfg = {f: value(OVERLONG + f) for f in OVERLONG_FIELDS}
    if not _on(cfg["enable"]):
        return
    manager, max_len = value("reward.reward_manager.name"), value("reward.reward_kwargs.max_resp_len")
    response = value("data.max_response_length")
    if manager != "dapo":
        yield Finding(ERROR, (OVERLONG + "enable", "reward.reward_manager.name"),
                      f"overlong_buffer_cfg is read by verl's dapo reward manager only; reward_manager.name="
                      f"{manager} ignores it. Set reward.reward_manager.name=dapo.")
    missing = [f for f, v in cfg.items() if v is None]
    if missing:
        yield Finding(ERROR, tuple(OVERLONG + f for f in missing),
                      f"verl's dapo reward manager reads overlong_buffer_cfg.{{{','.join(OVERLONG_FIELDS)}}}; "
                      f"{', '.join(missing)} unset fails its first reward call. Add +{OVERLONG}<field>=...")
    if max_len is None:
        yield Finding(ERROR, ("reward.reward_kwargs.max_resp_len",),
                      "overlong shaping needs +reward.reward_kwargs.max_resp_len (verl asserts); set it to "
                      f"data.max_response_length ({response}).")
        return
    if cfg["len"] is not None and not 0 < int(cfg["len"]) <= int(max_len):
        yield Finding(ERROR, (OVERLONG + "len", "reward.reward_kwargs.max_resp_len"),
                      f"overlong_buffer_cfg.len={cfg['len']} must be in 1..max_resp_len={max_len} (verl asserts).")
    if int(max_len) != int(response):
        yield Finding(WARNING, ("reward.reward_kwargs.max_resp_len", "data.max_response_length"),
                      f"reward_kwargs.max_resp_len={max_len} but data.max_response_length={response}: the penalty "
                      f"starts at max_resp_len - len = {int(max_len) - int(cfg['len'] or 0)} tokens of a "
                      f"{response}-token answer. Keep the two equal.")


def spread_from_metrics(rows: Iterable[Mapping[str, Any]], batch: int) -> float | None:
    """The fraction of groups with a score spread in a DAPO run's metrics rows (None without training steps).

    Each training step kept `batch` groups, evicted EVICTED (no spread) and discarded SURPLUS (a
    spread, beyond the batch); a step that evicted nothing does not log the key.
    """
    spread = total = 0.0
    for row in rows:
        if "timing_s/step" not in row:
            continue
        evicted, surplus = float(row.get(EVICTED) or 0), float(row.get(SURPLUS) or 0)
        spread += batch + surplus
        total += batch + surplus + evicted
    return spread / total if total else None


def read_metrics(stage_dir: Path) -> list[dict]:
    """The metrics rows of a stage folder's earlier attempts (metrics*.jsonl); unreadable lines skipped."""
    rows = []
    for path in sorted(stage_dir.glob("metrics*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a killed run
    return rows


def format_algorithm(overrides: Mapping[str, Any], value: Lookup, findings: list[Finding]) -> list[str]:
    """The dry run's algorithm section: its name, the verl keys that set it, then each finding (`#` lines)."""
    lines = [f"# algorithm: {algorithm_name(value)}; the verl keys that set it:"]
    lines += [f"#   {k}={v}" for k, v in algorithm_keys(overrides).items()]
    lines += [f"# {f.level}: {f.message}" for f in findings]
    return lines


def stage_report(recipe: Recipe, stage: Stage, run_dir: Path | None = None) -> tuple[list[str], list[Finding]]:
    """A PPO stage's algorithm section and findings, with the train set's size and, from an earlier
    attempt in `run_dir`, the measured spread when there are any."""
    value = lookup(stage.overrides, lambda key: verl_default("ppo", key))
    train = recipe.data.get("train")
    rows = _parquet_rows(Path(train)) if isinstance(train, str) and Path(train).is_file() else None
    spread = None
    if run_dir is not None and _on(value("algorithm.filter_groups.enable")):
        spread = spread_from_metrics(read_metrics(Path(run_dir) / stage.name), int(value("data.train_batch_size")))
    findings = check_algorithm(stage.overrides, lambda key: verl_default("ppo", key), spread, rows)
    return format_algorithm(stage.overrides, value, findings), findings


def _parquet_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):  # not a parquet file: the data preflight names it
        return None


def refuse_errors(recipe: Recipe, reports: Mapping[str, tuple[list[str], list[Finding]]]) -> None:
    """Raise a RecipeError listing every error finding of every stage (nothing launches)."""
    errors = [f"stage {name!r}: {f.message}" for name, (_, found) in reports.items() for f in found
              if f.level == ERROR]
    if errors:
        raise RecipeError(f"{recipe.path}: verl would accept these keys, but they make no sense:\n  "
                          + "\n  ".join(errors))

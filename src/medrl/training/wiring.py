"""Wiring check: does each GRPO step's reward signal reach the right rollouts and move the policy?

A short traced GRPO run (`run_traced`, verl's real trainer with `medrl.training.wiring_trace`)
writes one record per rollout and step; `check_trace` then verifies, per step, against the
training parquet itself (not against anything the run wrote about itself):

  reward_truth      every rollout's recorded reward equals the reward function run again on its
                    response and its own row's ground truth (row id round trip: the row index
                    travelled with the rollout through verl's dataset, agent loop and reward loop)
  groups            each GRPO group (uid) holds n rollouts of one row, one prompt and one image
  image_row         the pixels the actor saw are the pixels of the rollout's own row
  advantage_order   within a group, advantages order as the rewards do
  update_direction  after the update, the log-probability of each group's best rollout rose
                    relative to its worst (best and worst by the true reward)
  rollout_sync      the rollout engine sampled with the weights of the step before (version tag)
                    and its token probabilities agree with the actor's

A check fails loudly with the first offending rollouts; `format_report` prints a table.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medrl import jsonl
from medrl.training.env import trainer_mode_overrides

# The traced trainer (`medrl.training.wiring_trace`, imported inside verl's processes) and how
# the run tells it where to write and which faults to inject.
TRACE_MODULE = "medrl.training.wiring_trace"
TRACE_ENV = "MEDRL_WIRING_TRACE"
FAULTS_ENV = "MEDRL_WIRING_FAULTS"
TRAINER_MODE = "medrl_traced"
FAULTS = ("shuffle_rewards", "swap_images", "mix_groups", "stale_weights")
FINGERPRINT_CELLS = 64  # pixel-value means kept per image: enough to tell any two sample images apart


def parse_faults(text: str | None) -> dict[int, str]:
    """`"2:shuffle_rewards,3:swap_images"` -> {2: "shuffle_rewards", 3: "swap_images"}."""
    out: dict[int, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        step, _, fault = item.strip().partition(":")
        if fault not in FAULTS:
            raise ValueError(f"unknown wiring fault {fault!r}; known: {FAULTS}")
        out[int(step)] = fault
    return out


def image_fingerprint(pixel_values: Any) -> list[float]:
    """A short vector that identifies an image from the processor's pixel values (patch-row means)."""
    import torch

    flat = pixel_values.detach().float().reshape(-1)
    cells = torch.tensor_split(flat, min(FINGERPRINT_CELLS, flat.numel()))
    return [round(float(c.mean()), 5) for c in cells]



# Tolerances, with what they absorb.
SCORE_TOL = 1e-6            # the same float function on the same strings
IMAGE_TOL = 1e-3            # fingerprint means rounded to 5 decimals; different images differ by > 0.01
PROB_DIFF_MAX = 1e-3        # |p_rollout - p_actor| per token, fp32 both sides (measured about 1e-5)
UPDATE_SHARE = 0.75         # share of groups whose best rollout must gain on its worst after the update


@dataclass
class Check:
    """One verified property of one step."""

    name: str
    passed: bool
    detail: str


@dataclass
class StepReport:
    """All checks of one traced step."""

    step: int
    fault: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check of the step passed."""
        return all(c.passed for c in self.checks)

    def check(self, name: str) -> Check:
        """The named check."""
        return next(c for c in self.checks if c.name == name)


def read_trace(trace_dir: str | os.PathLike) -> dict[int, list[dict]]:
    """{step: [rollout record, ...]} from a traced run's `step_N.jsonl` files."""
    steps: dict[int, list[dict]] = {}
    for path in sorted(Path(trace_dir).glob("step_*.jsonl")):
        recs = jsonl.read(path)
        if recs:
            steps[int(path.stem.split("_")[1])] = recs
    if not steps:
        raise FileNotFoundError(f"no step_*.jsonl trace in {trace_dir} (did the traced trainer run?)")
    return steps


@dataclass
class Rows:
    """What the training parquet says about each row index: ground truth, extra_info, image fingerprint."""

    truth: dict[int, Any]
    extra: dict[int, dict]
    data_source: dict[int, str]
    image: dict[int, list[float]]


def load_rows(parquet: str | os.PathLike, processor_path: str, wanted: set[int]) -> Rows:
    """Read the rows `wanted` through verl's own RLHFDataset and image path (as the agent loop does)."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from medrl.data.check_rules import verl_dataset

    truth, extra, source, image = {}, {}, {}, {}
    with verl_dataset(parquet, processor_path) as (ds, proc, config):
        patch = getattr(proc.image_processor, "patch_size", 14)
        for i in range(len(ds)):
            raw = ds.dataframe[i]
            idx = (raw.get("extra_info") or {}).get("index", i)
            if idx not in wanted:
                continue
            truth[idx] = raw["reward_model"]["ground_truth"]
            extra[idx] = dict(raw.get("extra_info") or {})
            source[idx] = raw["data_source"]
            images, _ = asyncio.run(RLHFDataset.process_vision_info(ds[i]["raw_prompt"], patch, config))
            pixels = proc.image_processor(images=images, return_tensors="pt")["pixel_values"]
            image[idx] = image_fingerprint(pixels)
    return Rows(truth, extra, source, image)


def load_reward(path: str, name: str = "compute_score", kwargs: dict | None = None) -> Callable[..., Any]:
    """The reward verl ran, loaded the way verl loads it (`load_extern_type`), with its kwargs bound."""
    from verl.utils.import_utils import load_extern_type

    fn = load_extern_type(path, name)
    bound = dict(kwargs or {})

    def score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict) -> float:
        out = fn(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth,
                 extra_info=dict(extra_info, num_turns=2, rollout_reward_scores={}), **bound)
        return float(out["score"] if isinstance(out, dict) else out)

    return score


def _fmt_keys(recs: list[dict], limit: int = 3) -> str:
    return ", ".join(r["key"][-12:] for r in recs[:limit])


def _distance(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b)), default=math.inf) if len(a) == len(b) else math.inf


def _groups(recs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in recs:
        out.setdefault(r["uid"], []).append(r)
    return out


def check_reward_truth(recs: list[dict], rows: Rows) -> Check:
    """Recorded reward == reward(response, own row's truth); the truth that travelled == the row's."""
    bad_truth = [r for r in recs if r["row"] not in rows.truth or str(r["truth"]) != str(rows.truth[r["row"]])]
    bad_score = [r for r in recs if r["row"] in rows.truth and abs(r["true_score"] - r["score"]) > SCORE_TOL]
    if bad_truth:
        return Check("reward_truth", False, f"{len(bad_truth)}/{len(recs)} rollouts carried another row's "
                                            f"ground truth, e.g. {_fmt_keys(bad_truth)}")
    if bad_score:
        r = bad_score[0]
        return Check("reward_truth", False, f"{len(bad_score)}/{len(recs)} recorded rewards differ from the reward "
                                            f"of their own response and truth (e.g. row {r['row']}: recorded "
                                            f"{r['score']:.4f}, own truth gives {r['true_score']:.4f})")
    return Check("reward_truth", True, f"{len(recs)} rewards re-scored against their own row's truth")


def check_groups(recs: list[dict], n: int) -> Check:
    """Each uid holds n rollouts of one row, one prompt and one image; distinct uids are distinct rows."""
    problems = []
    groups = _groups(recs)
    for uid, g in groups.items():
        if len(g) != n:
            problems.append(f"group {uid[:8]} has {len(g)} rollouts, not {n}")
        if len({r["row"] for r in g}) > 1:
            problems.append(f"group {uid[:8]} mixes rows {sorted({r['row'] for r in g})}")
        if len({r["prompt"] for r in g}) > 1:
            problems.append(f"group {uid[:8]} mixes {len({r['prompt'] for r in g})} prompts")
        if any(_distance(r["image"], g[0]["image"]) > IMAGE_TOL for r in g):
            problems.append(f"group {uid[:8]} mixes images")
    rows = [g[0]["row"] for g in groups.values()]
    if len(set(rows)) != len(rows):
        problems.append("two groups share one row")
    if problems:
        return Check("groups", False, f"{len(problems)} problems: " + "; ".join(problems[:3]))
    return Check("groups", True, f"{len(groups)} groups of {n}: one row, one prompt, one image each")


def check_image_row(recs: list[dict], rows: Rows) -> Check:
    """The actor's pixels for each rollout are its own row's image (else name whose they are)."""
    bad = []
    for r in recs:
        if _distance(r["image"], rows.image.get(r["row"], [])) > IMAGE_TOL:
            near = min(rows.image, key=lambda k: _distance(r["image"], rows.image[k]))
            owner = near if _distance(r["image"], rows.image[near]) <= IMAGE_TOL else None
            bad.append((r, owner))
    if bad:
        r, owner = bad[0]
        whose = f"row {owner}'s image" if owner is not None else "an image of no traced row"
        return Check("image_row", False, f"{len(bad)}/{len(recs)} rollouts saw another image "
                                         f"(e.g. row {r['row']} was shown {whose})")
    return Check("image_row", True, f"{len(recs)} rollouts saw their own row's image")


def check_advantage_order(recs: list[dict]) -> Check:
    """Within each group, higher reward <=> higher advantage, equal <=> equal."""
    bad = 0
    for g in _groups(recs).values():
        for a in g:
            for b in g:
                dr, da = a["score"] - b["score"], a["advantage"] - b["advantage"]
                if (dr > SCORE_TOL and da <= 0) or (abs(dr) <= SCORE_TOL and abs(da) > 1e-4):
                    bad += 1
    if bad:
        return Check("advantage_order", False, f"{bad} rollout pairs whose advantages do not order as their rewards")
    return Check("advantage_order", True, "advantages order as rewards in every group")


def check_update_direction(recs: list[dict]) -> Check:
    """After the update, log p(best) - log p(worst) rose in at least UPDATE_SHARE of the groups."""
    margins = []
    for g in _groups(recs).values():
        best = max(g, key=lambda r: r["true_score"])
        worst = min(g, key=lambda r: r["true_score"])
        if best["true_score"] - worst["true_score"] <= SCORE_TOL:
            continue  # no reward spread, no signal to follow
        gain = lambda r: r["new_logp"] - r["old_logp"]  # noqa: E731
        margins.append(gain(best) - gain(worst))
    if not margins:
        return Check("update_direction", False, "no group had rollouts with different rewards: nothing to learn from")
    up = sum(m > 0 for m in margins) / len(margins)
    mean = sum(margins) / len(margins)
    detail = (f"best-vs-worst log-prob rose in {up:.0%} of {len(margins)} groups "
              f"(mean {mean:+.3g} nats; needs >= {UPDATE_SHARE:.0%})")
    return Check("update_direction", up >= UPDATE_SHARE and mean > 0, detail)


def check_rollout_sync(recs: list[dict], step: int) -> Check:
    """The rollout used the weights of step-1 (verl's version tag) and agrees with the actor."""
    versions = {r.get("weights_version") for r in recs}
    if versions != {step - 1}:
        return Check("rollout_sync", False, f"rollout weights version {sorted(map(str, versions))}, "
                                            f"expected {step - 1} (stale weights in the rollout engine)")
    diffs = [r["rollout_prob_diff"] for r in recs if "rollout_prob_diff" in r]
    if not diffs:
        return Check("rollout_sync", True, f"weights version {step - 1} (no rollout log-probs to compare)")
    worst = max(diffs)
    return Check("rollout_sync", worst < PROB_DIFF_MAX,
                 f"weights version {step - 1}; rollout-vs-actor |dp| per token: max {worst:.2g} "
                 f"(bound {PROB_DIFF_MAX:g})")


def check_trace(trace: dict[int, list[dict]], rows: Rows, reward: Callable[..., float], n: int) -> list[StepReport]:
    """Run every check on every traced step."""
    reports = []
    for step, recs in sorted(trace.items()):
        for r in recs:
            r["true_score"] = (reward(rows.data_source[r["row"]], r["response"], rows.truth[r["row"]],
                                      rows.extra[r["row"]]) if r["row"] in rows.truth else math.nan)
        rep = StepReport(step, recs[0].get("fault"))
        rep.checks = [check_reward_truth(recs, rows), check_groups(recs, n), check_image_row(recs, rows),
                      check_advantage_order(recs), check_update_direction(recs), check_rollout_sync(recs, step)]
        reports.append(rep)
    return reports


def format_report(reports: list[StepReport]) -> str:
    """A plain-text table: one block per step, one line per check."""
    lines = []
    for rep in reports:
        head = f"step {rep.step}" + (f" (injected fault: {rep.fault})" if rep.fault else "")
        lines.append(f"{head}: {'PASS' if rep.passed else 'FAIL'}")
        for c in rep.checks:
            lines.append(f"  {'ok  ' if c.passed else 'FAIL'} {c.name:<17} {c.detail}")
    return "\n".join(lines)


def traced_overrides(trace_dir: Path, faults: str = "") -> list[str]:
    """Stage overrides that select the traced trainer and reach its Ray processes."""
    env = {TRACE_ENV: str(trace_dir), **({FAULTS_ENV: faults} if faults else {})}
    return trainer_mode_overrides(TRAINER_MODE, TRACE_MODULE, env)


def run_traced(model: str, train: str, out: str | os.PathLike, *, val: str | None = None, steps: int = 1,
               faults: str = "", recipe: str = "cpu_tiny", overrides: tuple[str, ...] = (),
               echo: Callable[[str], None] = print) -> tuple[Path, Any]:
    """Run `steps` traced GRPO steps of the recipe's RL stage from `model`; returns (trace dir, recipe)."""
    from medrl.processes import RUN_MARKER
    from medrl.training.env import metrics_env, run_env
    from medrl.training.pipeline import stream_to_log
    from medrl.training.recipes import apply_overrides, load_recipe, resolve_paths
    from medrl.training.verl_command import build_command

    out = Path(out).resolve()
    trace_dir = out / "trace"
    stage = load_recipe(recipe).stage().name
    keys = [f"model={model}", f"data.train={train}", f"data.val={val or train}",
            f"{stage}.trainer.total_training_steps={steps}", f"{stage}.trainer.save_freq=-1",
            f"{stage}.trainer.test_freq=-1", f"{stage}.trainer.val_before_train=False"]
    keys += [f"{stage}.{k}" for k in traced_overrides(trace_dir, faults)]
    rec = resolve_paths(apply_overrides(load_recipe(recipe), keys + list(overrides)), out)
    cmd = build_command(rec, rec.stage(stage), out, model_path=rec.model)
    env = {**run_env(rec.device), **metrics_env(out)}
    echo(f"[wiring] {steps} traced GRPO step(s) of {rec.name}/{stage}, rollout "
         f"{rec.stage(stage).overrides.get('actor_rollout_ref.rollout.name', 'vllm')}; log {out / 'train.log'}")
    rc = stream_to_log(cmd, {**env, RUN_MARKER: str(out)}, out / "train.log", lambda line: echo(f"[wiring] {line}"))
    if rc != 0:
        raise RuntimeError(f"traced GRPO run failed (exit {rc}); see {out / 'train.log'}")
    return trace_dir, rec


def check_run(trace_dir: Path, recipe: Any) -> list[StepReport]:
    """Check a traced run of `recipe` (as `run_traced` returns it) against its training parquet."""
    stage = recipe.stage()
    trace = read_trace(trace_dir)
    wanted = {r["row"] for recs in trace.values() for r in recs}
    rows = load_rows(recipe.data["train"], recipe.model, wanted)
    reward = load_reward(recipe.reward["path"], recipe.reward.get("name", "compute_score"),
                         recipe.reward.get("kwargs"))
    return check_trace(trace, rows, reward, int(stage.overrides.get("actor_rollout_ref.rollout.n", 1)))

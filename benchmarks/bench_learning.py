"""Does GRPO learn on a CPU? Three arms from one SFT warm-up, per seed, on the same wall-time budget.

For each seed: a tiny Qwen2.5-VL (that seed's init), an SFT warm-up on a generated grounding set
(one finding per image, short answers), then from the same warm-up checkpoint:

  grpo      the cpu_tiny recipe's GRPO stage (IoU + format)
  shuffled  the same, each training rollout scored against another row's truth (negative control:
            whatever it gains does not come from the per-row signal)
  sft       SFT continued for the training time the grpo arm used, up to its next saved checkpoint (the
            control; verl 0.9.1's SFT trainer ignores trainer.seed, so from a shared --start this arm
            repeats one run)

GRPO arms stop when their training time (verl's step time: start-up and validation excluded)
reaches the budget (`medrl.bench.budget_trainer`). GRPO curves come from verl's own greedy
validation; the SFT arm's checkpoints, and every arm's final model, are generated greedily and
scored by `medrl eval` with the same reward. Prints validation mIoU, acc@0.5 and reward per arm
(min / median / max over seeds) and writes learning_curves.png and results.json into --out.
Finished arms are kept: running it again with more seeds adds them.

Comparing grounding rewards (issue 23): `--reward-arms shipped,iou,giou,...` runs one GRPO arm per
grounding spec in place of the single grpo arm, beside the same shuffled control (which keeps the
recipe's spec). A name is `shipped` (recipes/rewards/grounding.yaml, whose arm keeps the name grpo),
a file of recipes/rewards/candidates/ (`iou`: IoU + format, the shipped spec until 2026-12-05), or
a path to a spec. The table then
gives each arm's validation mIoU, acc@0.5 and median box/true area as min / median / max over seeds,
and each arm's margin over the shuffled arm per seed; learning_curves.png (mIoU) and
learning_curves_acc50.png (acc@0.5) plot every arm. GRPO curves are then re-scored by medrl eval's
rules from verl's dumps, whatever reward an arm trained on. `--data vindr` trains and validates on a
VinDr-like mix instead of one finding per image: about half the images without a finding, the
others with 1-3 (`medrl prepare sample --grounding --mix vindr`).

Comparing RL algorithms (issue 21): `--algorithm-arms grpo,gspo,dapo,dr_grpo,rloo,reinforce_pp` runs
one GRPO-trainer arm per algorithm in place of the single grpo arm, from the same start per seed
and on the same training-time budget. An arm is the cpu_tiny GRPO arm plus exactly the verl keys
its recipe (recipes/<name>_grounding.yaml) adds over grpo_grounding's GRPO stage, read from the
recipe files; DAPO's are shrunk as `medrl rehearse` shrinks them (dynamic sampling off, the
overlong lengths scaled to the response length). `--set` keys come last, for every arm. Before
anything launches each arm's final keys pass medrl's pre-launch algorithm check (an error stops
the bench, naming the algorithm). For every GRPO arm the table gives s/step: the median of verl's
`timing_s/step` over the arm's training steps (min / median / max over seeds). It can be combined
with --reward-arms (`grpo` then stands for both lists). The table is also written to --out/table.txt.

RL beyond SFT (issue 23 item 4): `--start A B C --arms grpo sft` starts each seed from its own model
(e.g. each warm-up trained on by SFT until it plateaus). The sft arm is then also the plateau check:
the table says per seed whether one more SFT budget added under +0.01 acc@0.5, and pairs GRPO's
final model with equal-time SFT's on the same validation rows. The sft arm keeps cpu_tiny's SFT lr
nearly constant; `--sft-anneal STEPS` makes its cosine schedule end after STEPS steps (about what
the budget holds: a harder control, since SFT that anneals can add more than SFT that does not).

Its 300 validation images give a paired change a standard error of about 0.02 acc@0.5, too wide to
decide a plateau (+0.01) or a lead of +0.03. `--test 1200` then also scores every seed's start and
final models on 1,200 new images (`medrl.bench.rescore`; benchmarks/rescore_learning.py does the same
for a finished run) and prints the same table from those scores into --out/rescored_n1200/table.txt.

    python benchmarks/bench_learning.py [--seeds 1] [--budget-min 20] [--out runs/bench_learning]
    python benchmarks/bench_learning.py --reward-arms shipped,iou,giou,f1iou --arms grpo shuffled \
        --data vindr --seeds 3 --budget-min 10 --out runs/bench_rewards_vindr
    python benchmarks/bench_learning.py --algorithm-arms grpo,gspo,dapo,dr_grpo,rloo,reinforce_pp \
        --arms grpo --seeds 3 --budget-min 10 --start runs/sft_start/merged --out runs/bench_algorithms
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medrl.atomic import atomic_open
from medrl.processes import LEFTOVER_PREFIXES, end_run, orphaned_shm, remove_shm, shm_segments
from medrl.training import learning
from medrl.bench.algorithm_arms import ALGORITHMS, BASE_RECIPE, algorithm_arms, check_arm, shrunk
from medrl.bench.budget_trainer import BUDGET_ENV, MODULE, TRAINER_MODE
from medrl.bench.generated_sets import DATA_SETS, NEW_IMAGES_SEED, data_files, prepare_data
from medrl.bench.learning_table import table
from medrl.bench.progress import log
from medrl.bench.rescore import SPEC, rescore_run, start_for
from medrl.training.env import metrics_env, run_env, trainer_mode_overrides
from medrl.training.pipeline import latest_checkpoint, merge
from medrl.training.recipes import REPO_ROOT, Recipe, apply_overrides, load_recipe, resolve_paths
from medrl.training.verl_command import build_command

SHUFFLED_REWARD = REPO_ROOT / "src" / "medrl" / "bench" / "shuffled_reward.py"
CANDIDATES = REPO_ROOT / "recipes" / "rewards" / "candidates"
SHIPPED = "shipped"  # --reward-arms' name for the shipped spec (SPEC); `iou` names candidates/iou.yaml
ARMS = ("grpo", "shuffled", "sft")
# The GRPO arms' response length per data set: cpu_tiny's 32 tokens fit one box (about 21 with the
# end token); the VinDr-like mix's 2- and 3-box answers take 40-66 (measured with the tiny tokenizer),
# and a cut rollout cannot earn a full answer's reward. Runs before 2026-12-04 used 32 on the mix.
RESPONSE_LENGTH = {"one": None, "vindr": 72}


def reward_arms(names: str | None) -> dict[str, Path]:
    """{arm name: spec file} for `--reward-arms` (comma-separated); `shipped` is the shipped spec, arm grpo."""
    arms: dict[str, Path] = {}
    for name in [n.strip() for n in (names or "").split(",") if n.strip()]:
        if name == SHIPPED:
            arm, spec = "grpo", SPEC
        elif (CANDIDATES / f"{name}.yaml").is_file():
            arm, spec = f"grpo_{name}", CANDIDATES / f"{name}.yaml"
        elif name.endswith((".yaml", ".yml")) and Path(name).is_file():
            arm, spec = f"grpo_{Path(name).stem}", Path(name).resolve()
        else:
            known = ", ".join([SHIPPED] + sorted(p.stem for p in CANDIDATES.glob("*.yaml")))
            raise ValueError(f"--reward-arms: {name!r} is neither a spec of {CANDIDATES} ({known}) nor a .yaml file")
        if arm in arms:
            raise ValueError(f"--reward-arms: {name!r} given twice")
        arms[arm] = spec
    return arms


def arm_list(arms: list[str], rewards: dict[str, Path], algorithms: dict[str, dict] | None = None) -> list[str]:
    """The arms to run, in order: with reward or algorithm arms, `grpo` stands for all of them."""
    grpo = list(dict.fromkeys([*rewards, *(algorithms or {})]))
    if not grpo:
        return list(arms)
    out: list[str] = []
    for arm in arms:
        out += grpo if arm == "grpo" else [arm]
    return out


def run_stage(stage: str, overrides: list[str], stage_dir: Path, model: str, data: dict[str, str],
              train_budget_s: float | None = None, attempts: int = 2, save_every: int | None = None) -> dict[int, float]:
    """Run one stage of the cpu_tiny recipe from `model`; returns {step: seconds since step 1 began}.

    With `train_budget_s` the trainer is stopped once that much time has passed since its first
    step began (the SFT arm: verl's SFT trainer has no time limit of its own); with `save_every` as
    well, not before the first checkpoint saved at or after the budget, so the last saved model has
    trained at least the budget. A launch that dies before its first step (Ray's start-up timing
    out on a crowded machine) is tried again.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _run_once(stage, overrides, stage_dir, model, data, train_budget_s, save_every)
        except StartupError as exc:
            if attempt == attempts:
                raise
            log(f"  [{stage_dir.name}] {exc}; trying again")
    raise AssertionError("unreachable")


class StartupError(RuntimeError):
    """A trainer that exited before its first step."""


def cpu_tiny(stage: str, overrides: list[str], data: dict[str, str], run_dir: Path) -> Recipe:
    """The cpu_tiny recipe on the bench's data with `overrides` on `stage`, paths resolved in `run_dir`."""
    keys = [f"data.{k}={v}" for k, v in data.items()] + [f"{stage}.{o}" for o in overrides]
    return resolve_paths(apply_overrides(load_recipe("cpu_tiny"), keys), run_dir)


def budget_done(seen: dict[int, float], budget_s: float | None, save_every: int | None) -> bool:
    """Whether a budgeted trainer may stop now that it logged its last step in `seen` ({step: seconds}).

    Without `save_every`: once the budget has passed. With it: once a step after the first save step
    that reached the budget is logged (verl's SFT trainer logs a step, then saves it), so that
    checkpoint is on disk and trained at least the budget.
    """
    if budget_s is None or not seen:
        return False
    if save_every is None:
        return seen[max(seen)] >= budget_s
    last = max(seen)
    return any(step % save_every == 0 and t >= budget_s and step < last for step, t in seen.items())


def _run_once(stage: str, overrides: list[str], stage_dir: Path, model: str, data: dict[str, str],
              train_budget_s: float | None, save_every: int | None = None) -> dict[int, float]:
    recipe = cpu_tiny(stage, overrides, data, stage_dir.parent)
    cmd = build_command(recipe, recipe.stage(stage), stage_dir, model_path=model)
    env = {**run_env(recipe.device), **metrics_env(stage_dir)}
    stage_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[int, float] = {}
    began = None
    shm_before = shm_segments(LEFTOVER_PREFIXES)
    with open(stage_dir / "train.log", "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True)
        for line in proc.stdout:
            fh.write(line)
            found = re.match(r"\S*step:(\d+) - ", line.strip())
            if found:
                now = time.monotonic()
                step = int(found.group(1))
                if began is None:  # step 1's duration is not seen; take the step-2 gap as its length
                    began = now
                seen[step] = now - began
                if step % 10 == 0:
                    log(f"  [{stage_dir.name}] {step_line(line)}")
                if budget_done(seen, train_budget_s, save_every):
                    os.killpg(proc.pid, signal.SIGTERM)  # this trainer's own process group
                    break
        rc = proc.wait()
    if train_budget_s is not None:
        # A trainer stopped at its budget leaves what SIGTERM did not reach: Ray's processes and
        # /dev/shm files nobody holds, the multiprocessing semaphores included (two per arm).
        end_run(proc.pid, None)
        remove_shm(orphaned_shm(shm_segments(LEFTOVER_PREFIXES) - shm_before, prefixes=LEFTOVER_PREFIXES))
    if rc != 0 and train_budget_s is None:
        kind = StartupError if not seen else RuntimeError
        raise kind(f"{stage_dir.name} failed (exit {rc}); see {stage_dir / 'train.log'}")
    return seen


def step_line(line: str) -> str:
    """The few figures worth watching in a verl step line."""
    keep = ("step:", "train/loss", "critic/score/mean", "timing_s/step", "actor/entropy", "val-aux/medrl/grounding/iou")
    return " ".join(p.strip() for p in line.strip().split(" - ") if p.strip().startswith(keep))[:300]


def merged(stage: str, stage_dir: Path, step: int | None = None) -> Path:
    """Merge a stage's last (or given) checkpoint into <stage_dir>/merged[_step]."""
    st = load_recipe("cpu_tiny").stage(stage)
    src = latest_checkpoint(st, stage_dir)
    target = stage_dir / "merged"
    if step is not None:
        src = stage_dir / "checkpoints" / f"global_step_{step}"
        target = stage_dir / f"merged_{step}"
    if not (target / "config.json").is_file():
        merge(src, target, "fp32", stage_dir / "merge.log")
    return target


# The sft arm's cosine schedule spans this many steps: far more than a budget holds, so its lr stays
# near cpu_tiny's 2e-3 (--sft-anneal sets a span that ends within the budget: a control that anneals).
SFT_SCHEDULE_STEPS = 100000


def sft_settings(seed: int, steps: int, save_freq: int) -> list[str]:
    return [f"trainer.total_training_steps={steps}", f"trainer.save_freq={save_freq}", "trainer.test_freq=-1",
            f"trainer.seed={seed}", "trainer.max_ckpt_to_keep=null"]


def warmup(seed_dir: Path, seed: int, steps: int, data: dict[str, str]) -> Path:
    """Tiny model (this seed's init) + SFT warm-up; returns the merged warm-up folder."""
    from medrl.training.tiny_model import build_tiny_model

    model = seed_dir / "model"
    if not (model / "config.json").is_file():
        build_tiny_model(model, seed=seed)
    stage_dir = seed_dir / "warmup"
    if not (stage_dir / "merged" / "config.json").is_file():
        run_stage("sft", sft_settings(seed, steps, steps), stage_dir, str(model), data)
    return merged("sft", stage_dir)


def grpo_keys(stage_dir: Path, seed: int, budget_s: float, val_every: int, extra: list[str],
              algorithm: dict[str, Any] | None = None) -> list[str]:
    """The verl keys of a GRPO arm over cpu_tiny's GRPO stage: the bench's, the `algorithm`'s (shrunk), `extra`."""
    keys = ["trainer.total_training_steps=100000", f"trainer.test_freq={val_every}",
            "trainer.save_freq=100000",  # > 0: verl saves the last step only
            "trainer.val_before_train=True", f"trainer.validation_data_dir={stage_dir / learning.VALIDATION_DIR}",
            f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}"]
    keys += trainer_mode_overrides(TRAINER_MODE, MODULE, {BUDGET_ENV: str(budget_s)})
    if algorithm:
        stage = apply_overrides(load_recipe("cpu_tiny"), [f"grpo.{o}" for o in extra]).stage("grpo").overrides
        keys += [f"{k}={v}" for k, v in shrunk(algorithm, stage).items()]
    return keys + extra


def check_arms(algorithms: dict[str, dict[str, Any]], extra: list[str], out: Path) -> list[str]:
    """medrl's pre-launch algorithm check on each algorithm arm's final keys: its report lines; errors raise."""
    lines = []
    for name, keys in algorithms.items():
        lines += check_arm(name, keys_as_run(grpo_keys(out / name, 0, 60.0, 10, extra, keys), out))
    return lines


def keys_as_run(keys: list[str], out: Path) -> Recipe:
    """cpu_tiny with a GRPO arm's keys, as `_run_once` launches it (data: the bench's files under `out`)."""
    return cpu_tiny("grpo", keys, data_files(out), out)


def grpo_arm(seed_dir: Path, arm: str, start: Path, seed: int, budget_s: float, data: dict[str, str],
             val_every: int, extra: list[str], spec: Path | None = None,
             algorithm: dict[str, Any] | None = None) -> dict:
    """One GRPO arm from `start` for `budget_s` training seconds (trained on reward `spec`, default the
    recipe's, with the keys an `algorithm` recipe adds)."""
    stage_dir = seed_dir / arm
    keys = grpo_keys(stage_dir, seed, budget_s, val_every, extra, algorithm)
    if arm == "shuffled":
        keys += [f"reward.custom_reward_function.path={SHUFFLED_REWARD}",
                 f"+reward.custom_reward_function.reward_kwargs.truths={data['train']}",
                 f"+reward.custom_reward_function.reward_kwargs.shuffle_seed={seed}"]
    if spec is not None:
        keys.append(f"+reward.custom_reward_function.reward_kwargs.spec={spec}")
    run_stage("grpo", keys, stage_dir, str(start), data)
    curve = learning.grpo_curve(stage_dir, rescore=True)
    final = learning.evaluate(merged("grpo", stage_dir), data["val"], stage_dir / "eval", str(SPEC),
                              curve[-1].step, curve[-1].train_s)
    return {"curve": curve, "final": final}


def step_seconds(stage_dir: Path) -> float:
    """The median of verl's `timing_s/step` over a GRPO stage's training steps (NaN without any)."""
    times = [float(m["timing_s/step"]) for step, m in learning.read_metrics(stage_dir).items()
             if step > 0 and "timing_s/step" in m]
    return statistics.median(times) if times else math.nan


def sft_arm(seed_dir: Path, start: Path, seed: int, train_s: float, data: dict[str, str], every: int,
            schedule_steps: int = SFT_SCHEDULE_STEPS) -> dict:
    """SFT continued from `start` for `train_s` training seconds (up to the next checkpoint, at most `every`
    steps more) or `schedule_steps`, whichever comes first; checkpoints scored by `medrl eval`."""
    stage_dir = seed_dir / "sft"
    times = run_stage("sft", sft_settings(seed + 1000, schedule_steps, every), stage_dir, str(start), data,
                      train_budget_s=train_s, save_every=every)
    saved = sorted(int(p.name.split("_")[-1]) for p in (stage_dir / "checkpoints").glob("global_step_*"))
    curve = [learning.evaluate(merged("sft", stage_dir, step), data["val"], stage_dir / f"eval_{step}", str(SPEC),
                               step, times.get(step, math.nan)) for step in saved]
    return {"curve": curve, "final": curve[-1]}


def run_seed(out: Path, seed: int, args, data: dict[str, str]) -> dict:
    """All arms of one seed (finished arms are read back, not run again)."""
    seed_dir = out / f"seed{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    # A warm-up per seed, or --start: one model shared by every seed (the seeds then vary the arms only)
    # or one per seed (each seed's own start, e.g. its warm-up trained on to a plateau).
    start = start_for(args.start, seed) or warmup(seed_dir, seed, args.sft_steps, data)
    res_file = seed_dir / "results.json"
    res = json.loads(res_file.read_text()) if res_file.is_file() else {}
    if "start" not in res:
        res["start"] = learning.evaluate(start, data["val"], seed_dir / "warmup" / "eval", str(SPEC)).__dict__
    rewards, algorithms = reward_arms(args.reward_arms), algorithm_arms(args.algorithm_arms)
    for arm in arm_list(args.arms, rewards, algorithms):
        if arm in res:
            if arm != "sft" and "s_step" not in res[arm] and (seed_dir / arm).is_dir():  # read back from before s/step
                res[arm]["s_step"] = step_seconds(seed_dir / arm)
                res_file.write_text(json.dumps(res, indent=1))
            continue
        log(f"seed {seed}: arm {arm}")
        if arm == "sft":
            trained = res.get("grpo", {}).get("curve", [{}])[-1].get("train_s", args.budget_min * 60)
            got = sft_arm(seed_dir, start, seed, trained, data, args.sft_every, args.sft_anneal)
        else:
            got = grpo_arm(seed_dir, arm, start, seed, args.budget_min * 60, data, args.val_every, args.set,
                           rewards.get(arm), algorithms.get(arm))
        res[arm] = {"curve": [p.__dict__ for p in got["curve"]], "final": got["final"].__dict__}
        if arm != "sft":
            res[arm]["s_step"] = step_seconds(seed_dir / arm)
        res_file.write_text(json.dumps(res, indent=1))
    return res


def arm_curve(res: dict, arm: str) -> list[learning.ValPoint]:
    """An arm's validation curve; the SFT arm's starts at the warm-up's own evaluation."""
    points = [learning.ValPoint(**p) for p in res[arm]["curve"]]
    return ([learning.ValPoint(**res["start"])] if arm == "sft" else []) + points


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...)")
    ap.add_argument("--budget-min", type=float, default=20.0, help="training minutes per GRPO arm")
    ap.add_argument("--sft-steps", type=int, default=300, help="SFT warm-up steps (the RL start level)")
    ap.add_argument("--val-every", type=int, default=10, help="GRPO steps between validations")
    ap.add_argument("--sft-every", type=int, default=25, help="SFT-arm steps between saved (scored) checkpoints")
    ap.add_argument("--sft-anneal", type=int, default=SFT_SCHEDULE_STEPS, metavar="STEPS",
                    help="the sft arm's cosine lr schedule ends after STEPS steps (the arm stops there if its "
                         "budget has not run out first); about the steps its budget holds makes a control that "
                         "anneals, the default keeps the lr nearly constant")
    ap.add_argument("--train", type=int, default=1000, help="training images")
    ap.add_argument("--val", type=int, default=300, help="validation images")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                    help="arms to run; with --reward-arms, grpo stands for one arm per reward spec")
    ap.add_argument("--reward-arms", default=None, metavar="NAMES",
                    help=f"comma-separated grounding specs, one GRPO arm each: {SHIPPED} (recipes/rewards/"
                         "grounding.yaml), names of recipes/rewards/candidates/*.yaml (iou, giou, f1iou, "
                         "iou_size_distance, ...) or paths to spec files")
    ap.add_argument("--algorithm-arms", default=None, metavar="NAMES",
                    help=f"comma-separated RL algorithms, one GRPO-trainer arm each: {', '.join(ALGORITHMS)} "
                         f"(the keys recipes/<name>_grounding.yaml adds over {BASE_RECIPE}; grpo: none)")
    ap.add_argument("--data", choices=DATA_SETS, default="one",
                    help="one finding per image, or a VinDr-like mix (about half no finding, the others 1-3)")
    ap.add_argument("--out", default="runs/bench_learning")
    ap.add_argument("--start", nargs="+", default=None, metavar="HF_DIR",
                    help="start every seed's arms from this SFT model instead of a warm-up per seed, "
                         "or give one model per seed (seed 0's first)")
    ap.add_argument("--test", type=int, default=0, metavar="N",
                    help=f"also score the start and final models on N new images (generator seed {NEW_IMAGES_SEED}) and "
                         "print that table too (as rescore_learning.py does); 0: only the validation images")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra verl keys for the GRPO arms (to try a setting against the recipe's)")
    args = ap.parse_args()
    if args.start and len(args.start) not in (1, args.seeds):
        ap.error(f"--start: give one model for every seed or one per seed ({args.seeds}), not {len(args.start)}")
    try:
        algorithms = algorithm_arms(args.algorithm_arms)
        arms = arm_list(args.arms, reward_arms(args.reward_arms), algorithms)
    except ValueError as exc:
        ap.error(str(exc))
    out = Path(args.out).resolve()
    length = RESPONSE_LENGTH[args.data]
    if length and not any(k.startswith("data.max_response_length=") for k in args.set):
        args.set = [f"data.max_response_length={length}", *args.set]  # the user's own value wins
    try:  # before anything launches: an arm verl would run with keys that make no sense stops the bench
        for line in check_arms(algorithms, args.set, out):
            print(line)
    except ValueError as exc:
        print(f"bench_learning: {exc}", file=sys.stderr)
        return 2
    data = prepare_data(out, args.train, args.val, args.data)
    results = {}
    for seed in range(args.seeds):
        results[seed] = run_seed(out, seed, args, data)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "seeds": results}, indent=1))
    curves = {arm: [arm_curve(results[s], arm) for s in results if arm in results[s]] for arm in arms}
    what = f"{len(results)} seed(s), {args.budget_min:g} min per arm, data {args.data}"
    plot = learning.plot_curves(curves, out / "learning_curves.png", f"validation mIoU, {what}")
    plot_acc = learning.plot_curves(curves, out / "learning_curves_acc50.png", f"validation acc@0.5, {what}",
                                    metric="acc50")
    text = table(results, arms, out)
    with atomic_open(out / "table.txt", encoding="utf-8") as fh:  # header: the command, as benchmarks/results keeps it
        fh.write(f"# {' '.join(['bench_learning.py', *sys.argv[1:]])}\n{text}\n")
    print(text)
    print(f"plots: {plot}, {plot_acc}\nresults: {out / 'results.json'}")
    if args.test:
        written, text = rescore_run(out, args.test, command=f"bench_learning.py --test {args.test}")
        print(f"scored again on {args.test} new images:\n{text}\ntable: {written}")
    return 0 if all(not math.isnan(results[s]["start"]["miou"]) for s in results) else 1


if __name__ == "__main__":
    sys.exit(main())

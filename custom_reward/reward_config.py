"""Which reward each training job uses; writes the seed's sbatch scripts. As a verl reward file: the composed reward.

    python custom_reward/reward_config.py            # table + jobs/single_node_{basic,enhanced}.sh
    python custom_reward/reward_config.py --list     # table only

The scripts come from `medrl slurm` (medrl.slurm.write_seed_jobs); their recipes name the
reward file and spec shown in the table. This script sits above every layer of medrl
(it reads recipes and writes SLURM jobs), so the rewards package does not import those.
"""

import argparse
import sys
from pathlib import Path

from medrl.rewards.compose import compute_score, compute_score_async, compute_score_batch  # noqa: F401

# The reward file for each kind of run (reward.custom_reward_function.path).
JOB_REWARDS = {
    "grounding (basic)": "custom_reward/iou_reward.py",
    "grounding (enhanced)": "custom_reward/enhanced_medical_reward.py",
    "report": "custom_reward/bleu_reward.py",
    "vqa / mixed data sources": "custom_reward/medrl_reward.py",
    "judge-scored": "custom_reward/judge_reward.py",
    "change action": "custom_reward/change_reward.py",
    "format only": "custom_reward/format_reward.py",
}


def job_rewards() -> list:
    """(sbatch script, recipe, reward file, reward spec) for each example job of `medrl slurm`."""
    from medrl.slurm import EXAMPLE_JOBS
    from medrl.training.recipes import load_recipe

    rows = []
    for script, argv in EXAMPLE_JOBS.items():
        reward = load_recipe(argv[0]).reward
        rows.append((script, argv[0], str(reward.get("path", "")),
                     str((reward.get("kwargs") or {}).get("spec", "default routes"))))
    return rows


def main(argv=None, repo=None) -> int:
    """Print which reward each job uses, and write the seed's job scripts."""
    ap = argparse.ArgumentParser(prog="reward_config.py", description=main.__doc__)
    ap.add_argument("--out", default=None, help="folder for the sbatch scripts (default: <repo>/jobs)")
    ap.add_argument("--list", action="store_true", help="only print the table; write nothing")
    args = ap.parse_args(argv)
    width = max(len(k) for k in JOB_REWARDS)
    for kind, path in JOB_REWARDS.items():
        print(f"{kind:<{width}}  reward.custom_reward_function.path={path}")
    print()
    for script, recipe, path, spec in job_rewards():
        print(f"jobs/{script}: recipe {recipe} -> {path} (spec: {spec})")
    if args.list:
        return 0
    from medrl.slurm import write_seed_jobs

    out = Path(args.out) if args.out else (repo or Path.cwd()) / "jobs"
    for written in write_seed_jobs(out):
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main(repo=Path(__file__).resolve().parents[1]))

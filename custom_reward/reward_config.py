"""Which reward file each training job points at; as a verl reward file it is the composed reward.

    python custom_reward/reward_config.py      # prints the job -> reward file table

The job scripts themselves are written by `medrl slurm`; this entry keeps the
seed's name and tells which `custom_reward_function.path` each job uses.
"""

import sys

from medrl.rewards import JOB_REWARDS, print_job_rewards
from medrl.rewards.compose import compute_score, compute_score_async, compute_score_batch  # noqa: F401

if __name__ == "__main__":
    sys.exit(print_job_rewards(JOB_REWARDS))

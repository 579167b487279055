"""Which reward each training job uses; writes the seed's sbatch scripts. As a verl reward file: the composed reward.

    python custom_reward/reward_config.py            # table + jobs/single_node_{basic,enhanced}.sh
    python custom_reward/reward_config.py --list     # table only

The scripts come from `medrl slurm` (medrl.slurm.write_seed_jobs); their recipes name the
reward file and spec shown in the table.
"""

import sys
from pathlib import Path

from medrl.rewards import reward_config_main
from medrl.rewards.compose import compute_score, compute_score_async, compute_score_batch  # noqa: F401

if __name__ == "__main__":
    sys.exit(reward_config_main(repo=Path(__file__).resolve().parents[1]))

"""Rewards for medical VLM post-training, each a plain function with verl's `compute_score` signature.

Modules: `answer` (reply parts), `iou`, `bleu`, `format`, `vqa`, `enhanced`, `judge`,
`compose` (routing by data_source). The files under `custom_reward/` are the
doors verl loads by path; they only import from here.
"""

from __future__ import annotations

# The reward file each kind of job points at (reward.custom_reward_function.path).
JOB_REWARDS: dict[str, str] = {
    "grounding (basic)": "custom_reward/iou_reward.py",
    "grounding (enhanced)": "custom_reward/enhanced_medical_reward.py",
    "report": "custom_reward/bleu_reward.py",
    "vqa / mixed data sources": "custom_reward/medrl_reward.py",
    "judge-scored": "custom_reward/judge_reward.py",
    "format only": "custom_reward/format_reward.py",
}


def print_job_rewards(table: dict[str, str]) -> int:
    """Print the job -> reward file table; returns 0."""
    width = max(len(k) for k in table)
    for job, path in table.items():
        print(f"{job:<{width}}  reward.custom_reward_function.path={path}")
    return 0

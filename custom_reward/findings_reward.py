"""verl reward file for report writing: findings F1 over CheXpert observations (logic: medrl.rewards.findings).

    reward.custom_reward_function.path=custom_reward/findings_reward.py
    reward.custom_reward_function.name=compute_score
"""

from medrl.rewards.findings import compute_score  # noqa: F401

"""verl reward file: 1 for `<think>...</think><answer>...</answer>`, else 0 (logic: medrl.rewards.format).

    reward.custom_reward_function.path=custom_reward/format_reward.py
    reward.custom_reward_function.name=compute_score
"""

from medrl.rewards.format import compute_score  # noqa: F401

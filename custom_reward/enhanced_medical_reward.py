"""verl reward file: spatial + semantic + reasoning + clinical relevance (logic: medrl.rewards.enhanced).

    reward.custom_reward_function.path=custom_reward/enhanced_medical_reward.py
    reward.custom_reward_function.name=compute_score
"""

from medrl.rewards.enhanced import compute_score  # noqa: F401

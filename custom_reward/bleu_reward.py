"""verl reward file for report writing: sentence BLEU-4 of the answer (logic: medrl.rewards.bleu).

    reward.custom_reward_function.path=custom_reward/bleu_reward.py
    reward.custom_reward_function.name=compute_score
"""

from medrl.rewards.bleu import compute_score  # noqa: F401

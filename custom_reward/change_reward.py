"""verl reward file for bi-temporal change localisation: predicted action vector / box vs the truth (logic: medrl.rewards.change).

    reward.custom_reward_function.path=custom_reward/change_reward.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.tolerance=0.25        # RMSE at which the score reaches 0
    +reward.custom_reward_function.reward_kwargs.box_convention=abs_resized   # if the policy answers Qwen2.5-VL pixel boxes
"""

from medrl.rewards.change import compute_score  # noqa: F401

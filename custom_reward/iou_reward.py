"""verl reward file for abnormality grounding: IoU of one-to-one matched boxes (logic: medrl.rewards.iou).

    reward.custom_reward_function.path=custom_reward/iou_reward.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.box_convention=abs_resized   # Qwen2.5-VL pixels
"""

from medrl.rewards.iou import compute_score  # noqa: F401

"""verl reward file: a VLM judge behind an OpenAI-compatible endpoint rates the answer (logic: medrl.rewards.judge).

In verl's reward loop use the async variant, so requests overlap:

    reward.custom_reward_function.path=custom_reward/judge_reward.py
    reward.custom_reward_function.name=compute_score_async
    +reward.custom_reward_function.reward_kwargs.base_url=http://judge-host:8000/v1
    +reward.custom_reward_function.reward_kwargs.model=Qwen/Qwen2.5-VL-7B-Instruct
"""

from medrl.rewards.judge import compute_score, compute_score_async, compute_score_batch  # noqa: F401

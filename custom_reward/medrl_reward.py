"""verl reward file: routes each row by data_source to a weighted sum of rewards (logic: medrl.rewards.compose).

    reward.custom_reward_function.path=custom_reward/medrl_reward.py
    reward.custom_reward_function.name=compute_score          # compute_score_async when a route uses the judge
    +reward.custom_reward_function.reward_kwargs.spec=recipes/rewards.yaml   # optional; default routes otherwise

Legacy batch manager: name=compute_score_batch.
"""

from medrl.rewards.compose import compute_score, compute_score_async, compute_score_batch  # noqa: F401

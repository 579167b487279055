"""Negative control for learning benchmarks: every training rollout is scored against another row's truth.

The reward is medrl's composed reward (`medrl.rewards.compose`, same spec and kwargs) with one
change: for rows of the training split, the ground truth is that of another training row, fixed
by a seeded derangement of the row indices. Validation rows keep their own truth, so validation
measures the same thing in every arm. A policy that still improves under this reward is learning
something other than the per-row signal (a prior over where boxes usually are, the format).

    reward.custom_reward_function.path=<this file>   (verl loads it by path in its reward workers)
    +reward.custom_reward_function.reward_kwargs.truths=<train.parquet>
    +reward.custom_reward_function.reward_kwargs.shuffle_seed=0
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from medrl.rewards.compose import compute_score as composed_score


@lru_cache(maxsize=4)
def donor_truths(truths: str, seed: int) -> dict[int, Any]:
    """{training row index: the ground truth it is scored against} (never its own row's)."""
    import pyarrow.parquet as pq

    table = pq.read_table(truths, columns=["reward_model", "extra_info"]).to_pylist()
    index = [int(r["extra_info"]["index"]) for r in table]
    truth = [r["reward_model"]["ground_truth"] for r in table]
    rng = np.random.default_rng(seed)
    while True:  # a derangement: no row keeps its own truth
        perm = rng.permutation(len(index))
        if len(index) < 2 or not (perm == np.arange(len(index))).any():
            break
    return {index[i]: truth[int(perm[i])] for i in range(len(index))}


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  truths: str = "", shuffle_seed: int = 0, **kwargs: Any) -> dict:
    """medrl's composed reward, against another training row's ground truth for training rows."""
    info = extra_info if isinstance(extra_info, dict) else {}
    if info.get("split") == "train" and truths:
        ground_truth = donor_truths(truths, int(shuffle_seed))[int(info["index"])]
    return composed_score(data_source, solution_str, ground_truth, extra_info, **kwargs)

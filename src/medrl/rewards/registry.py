"""The named rewards a spec can use: medrl's built-ins (imported on first use) and registered ones.

A built-in module with a `load()` (the learned metrics, `medrl.rewards.learned`) has it called on
first use, so its package and weights load, or fail naming them, when the spec that names it does.

`register_reward` adds a reward for the process that calls it; a reward that must reach verl's
reward workers (other processes) belongs in a file a spec names (`medrl.rewards.user_reward`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

RewardFn = Callable[..., dict]


@dataclass(frozen=True)
class RewardEntry:
    """A named reward: its per-sample function, its keys, and optional batch/async variants."""

    name: str
    fn: RewardFn
    keys: tuple[str, ...]
    batch_fn: Callable[..., list] | None = None
    async_fn: Callable[..., Any] | None = None
    details_fn: Callable[..., tuple] | None = None  # (result, what was read), for evaluation reports


BUILTIN_REWARDS = {
    "iou": "medrl.rewards.iou",
    "giou": "medrl.rewards.giou",
    "f1iou": "medrl.rewards.f1iou",
    "size": "medrl.rewards.size",
    "bleu": "medrl.rewards.bleu",
    "findings": "medrl.rewards.findings",
    "radgraph": "medrl.rewards.radgraph_f1",  # optional, learned: medrl[learned]
    "chexbert": "medrl.rewards.chexbert_f1",  # optional, learned: medrl[learned]
    "format": "medrl.rewards.format",
    "vqa": "medrl.rewards.vqa",
    "enhanced": "medrl.rewards.enhanced",
    "judge": "medrl.rewards.judge",
    "change": "medrl.rewards.change",
}
_REGISTRY: dict[str, RewardEntry] = {}


def register_reward(name: str, fn: RewardFn, keys: Sequence[str], batch_fn: Callable | None = None,
                    async_fn: Callable | None = None, details_fn: Callable | None = None) -> None:
    """Register a reward under `name` so that specs can use it (keys must start with "score")."""
    keys = tuple(keys)
    if not keys or keys[0] != "score":
        raise ValueError(f"reward {name!r}: keys must start with 'score', got {keys}")
    _REGISTRY[name] = RewardEntry(name, fn, keys, batch_fn, async_fn, details_fn)


def reward_names() -> list[str]:
    """Names usable in a spec: the built-in rewards and the registered ones."""
    return sorted(set(BUILTIN_REWARDS) | set(_REGISTRY))


def get_reward(name: str) -> RewardEntry:
    """The registered reward `name` (built-ins are imported on first use)."""
    if name not in _REGISTRY:
        if name not in BUILTIN_REWARDS:
            raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(reward_names())}")
        mod = importlib.import_module(BUILTIN_REWARDS[name])
        if hasattr(mod, "load"):  # a learned metric: its package and weights now, when the spec loads
            mod.load()
        register_reward(name, mod.compute_score, mod.KEYS, getattr(mod, "compute_score_batch", None),
                        getattr(mod, "compute_score_async", None), getattr(mod, "score_details", None))
    return _REGISTRY[name]

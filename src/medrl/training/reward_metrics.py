"""The reward's extra keys as training metrics at every step: verl 0.9.1 logs them in validation only.

verl's validation (`_validate` -> `process_validation_metrics`) logs every key a reward returns as
`val-aux/<data_source>/<key>/mean@N`. Its training step does not: the v1 trainer's
`_compute_metrics` reads a fixed list of fields (scores, rewards, advantages, lengths), and the
reward's extra keys only travel with each sample (`extra_fields["reward_extra_info"]` in the
TransferQueue) to the rollout dump (`trainer.rollout_data_dir`). So the box-growth monitor
(`area_ratio`, `hit50`, `medrl.rewards.box_growth`) would be invisible while training.

`RewardMetricsMixin` adds them: after verl's own metrics it reads the step's samples'
`reward_extra_info` and logs, per numeric key, `reward_extra/<key>/mean` over the rows that have a
number (a composed spec's NaN, "this row's route does not use that reward", is left out), and for
each `.../area_ratio` key `reward_extra/<key>/median_matched`, the median over rows with a matched
box (its sibling `n_matched` > 0), the figure the neutral 1.0 of unmatched rows cannot dilute.
medrl's trainers (`medrl.bench.budget_trainer`) mix it in; `trainer.v1.trainer_mode=medrl_sync`
(`trainer_mode_overrides(TRAINER_MODE, MODULE)`) is verl's sync trainer with it and nothing else.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

PREFIX = "reward_extra"
TRAINER_MODE = "medrl_sync"
MODULE = __name__


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def reward_extra_metrics(infos: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """{reward_extra/<key>/mean, and .../area_ratio/median_matched} over the rows' reward extra info."""
    columns: dict[str, list[float]] = {}
    for info in infos:
        for key, value in (info or {}).items():
            v = _number(value)
            if v is not None and not isinstance(value, bool):
                columns.setdefault(str(key), []).append(v)
    out = {f"{PREFIX}/{k}/mean": statistics.fmean(vs) for k, vs in columns.items() if vs}
    for key in columns:
        if key == "area_ratio" or key.endswith("/area_ratio"):
            sibling = key[: -len("area_ratio")] + "n_matched"
            matched = [v for info in infos if (info or {}).get(sibling) is not None
                       and (_number(info[sibling]) or 0) > 0 for v in [_number(info.get(key))] if v is not None]
            if matched:
                out[f"{PREFIX}/{key}/median_matched"] = statistics.median(matched)
    return out


def step_reward_infos(batch: Any, kv_batch_get: Any) -> list[dict]:
    """The `reward_extra_info` of each non-padding sample of a v1 training batch (read from the TransferQueue)."""
    data = kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    extra = data["extra_fields"]
    extra = extra.tolist() if hasattr(extra, "tolist") else list(extra)
    infos = []
    for tag, fields in zip(batch.tags, extra):
        if tag.get("is_padding", False) or not isinstance(fields, dict):
            continue
        info = fields.get("reward_extra_info")
        if isinstance(info, dict):
            infos.append(info)
    return infos


class RewardMetricsMixin:
    """Adds `reward_extra_metrics` of each training step to verl's step metrics (mix in before verl's trainer)."""

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        import transfer_queue as tq

        metrics.update(reward_extra_metrics(step_reward_infos(batch, tq.kv_batch_get)))


def _trainer_class():
    from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer

    class RewardMetricsTrainer(RewardMetricsMixin, PPOTrainerSync):
        """verl's synchronous trainer that also logs the reward's extra keys at every training step."""

        def __init__(self, config):
            from omegaconf import open_dict

            with open_dict(config):  # behave exactly as verl's "sync" mode wherever verl branches on it
                config.trainer.v1.trainer_mode = "sync"
            super().__init__(config)

    register_trainer(TRAINER_MODE)(RewardMetricsTrainer)
    return RewardMetricsTrainer


RewardMetricsTrainer = _trainer_class()

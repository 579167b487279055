"""verl's synchronous GRPO trainer with a wall-clock budget: the step that would overrun it is never started.

Selected with `trainer.v1.trainer_mode=medrl_budget` (verl's trainer registry) and imported in
verl's processes through `VERL_USE_EXTERNAL_MODULES` (`medrl.training.env.trainer_mode_overrides`).
`MEDRL_TRAIN_BUDGET_S` counts the seconds spent inside training steps (generation, reward,
log-probs, update, weight sync); start-up and validation are not counted, so arms of a
benchmark that validate at different rates still get the same training time. After each step
the trainer predicts the next one from the slowest recent step; when it would end past the
budget, the next step becomes verl's last step (`total_training_steps`), which validates and
saves as a planned last step does. `trainer.total_training_steps` stays an upper bound.
It also logs the reward's extra keys (the box-growth monitor among them) at every training step,
which verl 0.9.1 does only in validation (`medrl.training.reward_metrics`).
"""

from __future__ import annotations

import os
import time

BUDGET_ENV = "MEDRL_TRAIN_BUDGET_S"
TRAINER_MODE = "medrl_budget"
MODULE = __name__


def next_is_last(trained_s: float, step_s: list[float], budget_s: float) -> bool:
    """True when the step after the next would end past the budget (predicted from the slowest of the last 3)."""
    return trained_s + 2 * max(step_s[-3:]) > budget_s


def _trainer_class():
    from omegaconf import open_dict
    from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer

    from medrl.training.reward_metrics import RewardMetricsMixin

    class BudgetTrainer(RewardMetricsMixin, PPOTrainerSync):
        """verl's synchronous trainer that stops before its training time exceeds a budget (and logs the
        reward's extra keys at every training step: `medrl.training.reward_metrics`)."""

        def __init__(self, config):
            with open_dict(config):  # behave exactly as verl's "sync" mode wherever verl branches on it
                config.trainer.v1.trainer_mode = "sync"
            super().__init__(config)
            self.budget_s = float(os.environ[BUDGET_ENV])
            self.trained_s = 0.0
            self.step_s: list[float] = []

        def on_step_begin(self):
            self._step_started = time.monotonic()
            super().on_step_begin()

        def on_step_end(self):
            super().on_step_end()
            self.step_s.append(time.monotonic() - self._step_started)
            self.trained_s += self.step_s[-1]
            if next_is_last(self.trained_s, self.step_s, self.budget_s) and self.total_training_steps > self.global_steps + 1:
                # The step after the next one would overrun: make the next one verl's last.
                self.total_training_steps = self.global_steps + 1
                print(f"[medrl_budget] {self.trained_s:.0f} s of {self.budget_s:.0f} s trained: "
                      f"step {self.global_steps + 1} is the last", flush=True)

    register_trainer(TRAINER_MODE)(BudgetTrainer)
    return BudgetTrainer


BudgetTrainer = _trainer_class()

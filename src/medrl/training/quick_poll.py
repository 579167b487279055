"""verl's synchronous replay buffer, polling its TransferQueue every 0.25 s instead of every 2 s.

verl 0.9.1's `ReplayBuffer.sample` waits for a step's rollouts by polling, and the trainer builds
it with the default `poll_interval=2.0`: each generation phase (and each validation) is rounded
up to the next 2-second tick. With a tiny model on a CPU a whole generation phase takes a few
seconds, so that rounding is a large share of a step (measured: see recipes/cpu_tiny.yaml).

verl's own extension point selects it (the sampler is otherwise verl's, unchanged):

    trainer.v1.sampler.custom_sampler.path=pkg://medrl.training.quick_poll
    trainer.v1.sampler.custom_sampler.name=QuickPollReplayBuffer
"""

from __future__ import annotations

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

POLL_INTERVAL_S = 0.25  # each poll is one small RPC to the TransferQueue controller


class QuickPollReplayBuffer(ReplayBuffer):
    """verl's `ReplayBuffer` with a shorter poll interval."""

    def __init__(self, *args, poll_interval: float = POLL_INTERVAL_S, **kwargs):
        super().__init__(*args, poll_interval=poll_interval, **kwargs)

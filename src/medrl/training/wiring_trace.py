"""A traced verl GRPO trainer: records what each step's loop actually did, per rollout.

verl 0.9.1's trainers are registered by name (`verl.trainer.ppo.v1.register_trainer`) and chosen
with `trainer.v1.trainer_mode`; this module registers `medrl_traced`, verl's own synchronous
trainer plus one extra read at the end of each step. It is imported in verl's processes through
`VERL_USE_EXTERNAL_MODULES` (see `medrl.training.wiring.traced_overrides`); nothing in
site-packages is touched and no verl function is replaced.

After the actor update of every step it reads, from verl's TransferQueue, the fields the step
used (uid, row, ground truth, prompt ids, the pixel values the actor saw, the response, the
reward, the advantage, the rollout's and the actor's log-probs), scores the same responses again
with the updated actor, and writes one JSON line per rollout to `$MEDRL_WIRING_TRACE/step_N.jsonl`.
`medrl.training.wiring` checks those files.

Faults for the wiring test are injected here, one per chosen step (`MEDRL_WIRING_FAULTS`, e.g.
`2:shuffle_rewards,3:swap_images`), at the place a real bug would sit:
  shuffle_rewards  rewards moved to other rollouts after scoring (a reward on the wrong sample)
  swap_images      each prompt sent with the next row's image (an image paired with the wrong prompt)
  mix_groups       one rollout of each group moved to the next group (advantages across prompts)
  stale_weights    the weight sync before this step skipped (stale weights in the rollout engine)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrl.training.wiring import FAULTS_ENV, TRACE_ENV, TRAINER_MODE, image_fingerprint, parse_faults

def _sha(values: Any) -> str:
    return hashlib.sha1(json.dumps(values, default=str).encode()).hexdigest()[:16]


def _rows(x: Any) -> list:
    """One entry per sample from whatever TransferQueue hands back (nested tensor, stack, array)."""
    if isinstance(x, torch.Tensor):
        return list(x.unbind()) if x.is_nested else list(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return list(x)


def _derangement(n: int, seed: int) -> list[int]:
    """A permutation of range(n) that moves every element (n >= 2)."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n).tolist()
        if all(p != i for i, p in enumerate(perm)):
            return perm


def _trainer_class():
    import transfer_queue as tq
    from omegaconf import open_dict
    from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer
    from verl.utils import tensordict_utils as tu

    class TracedTrainer(PPOTrainerSync):
        """verl's synchronous GRPO trainer, plus a per-rollout trace and optional injected faults."""

        def __init__(self, config):
            # Behave exactly as verl's "sync" mode wherever verl branches on the mode name.
            with open_dict(config):
                config.trainer.v1.trainer_mode = "sync"
            super().__init__(config)
            self.trace_dir = Path(os.environ[TRACE_ENV])
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            self.faults = parse_faults(os.environ.get(FAULTS_ENV))

        def _fault(self, step: int | None = None) -> str | None:
            return self.faults.get(self.global_steps if step is None else step)

        # ---- faults, each at the place a real bug would sit ----------------------------

        def _next_train_batch(self, num_prompts=None):
            batch = super()._next_train_batch(num_prompts)
            if self._fault() == "swap_images":
                prompts = [copy.deepcopy(m) for m in _rows(batch["raw_prompt"])]
                images = [[c for msg in m for c in (msg.get("content") or []) if isinstance(c, dict)
                           and c.get("type") == "image"] for m in prompts]
                for i, m in enumerate(prompts):
                    donor = iter(copy.deepcopy(images[(i + 1) % len(prompts)]))
                    for msg in m:
                        if isinstance(msg.get("content"), list):
                            msg["content"] = [next(donor) if isinstance(c, dict) and c.get("type") == "image"
                                              else c for c in msg["content"]]
                arr = np.empty(len(prompts), dtype=object)
                arr[:] = prompts
                batch["raw_prompt"] = tu.get_tensordict({"raw_prompt": arr}).get("raw_prompt")
            return batch

        def _compute_advantage(self, batch, metrics):
            fault = self._fault()
            if fault == "shuffle_rewards":
                data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["rm_scores"])
                scores = _rows(data["rm_scores"])
                perm = _derangement(len(scores), self.global_steps)
                moved = []
                for i, s in enumerate(scores):  # keep each rollout's token layout, take another's score
                    t = torch.zeros_like(s)
                    t[-1] = scores[perm[i]].sum()
                    moved.append(t)
                nested = torch.nested.as_nested_tensor(moved, layout=torch.jagged)
                tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                                fields=tu.get_tensordict({"rm_scores": nested}))
            elif fault == "mix_groups":
                data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid"])
                uids = [str(u) for u in _rows(data["uid"])]
                order = sorted(set(uids))
                firsts = {u: uids.index(u) for u in order}  # one rollout per group moves to the next group
                for k, u in enumerate(order):
                    uids[firsts[u]] = order[(k + 1) % len(order)]
                arr = np.empty(len(uids), dtype=object)
                arr[:] = uids
                tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                                fields=tu.get_tensordict({"uid": arr}))
            return super()._compute_advantage(batch, metrics)

        def on_step_end(self):
            if self._fault(self.global_steps + 1) == "stale_weights":
                return  # the next step rolls out with the weights this step started from
            super().on_step_end()

        # ---- the trace -------------------------------------------------------------------

        def _update_actor(self, batch, metrics):
            batch = super()._update_actor(batch, metrics)
            self._write_trace(batch)
            return batch

        def _log_probs_now(self, batch) -> list[torch.Tensor]:
            """The updated actor's log-probs of each rollout's response tokens."""
            from verl.workers.utils.padding import response_from_nested

            batch.extra_info.update({"calculate_entropy": False, "compute_loss": False,
                                     "temperature": self.config.actor_rollout_ref.rollout.temperature})
            self.actor_rollout_wg.compute_log_prob(batch)
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                   select_fields=["log_probs", "response_mask"])
            return _rows(response_from_nested(data["log_probs"], data["response_mask"]))

        def _write_trace(self, batch) -> None:
            new_lp = self._log_probs_now(batch)
            fields = ["uid", "prompts", "responses", "rm_scores", "advantages", "old_log_probs",
                      "reward_model", "extra_info", "data_source", "multi_modal_inputs"]
            if self.config.actor_rollout_ref.rollout.calculate_log_probs:
                fields.append("rollout_log_probs")
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
            cols = {f: _rows(data[f]) for f in fields}
            lines = []
            for i, key in enumerate(batch.keys):
                tag = batch.tags[i]
                if tag.get("is_padding"):
                    continue
                resp = cols["responses"][i].tolist()
                old = cols["old_log_probs"][i].float()
                rec = {
                    "step": self.global_steps,
                    "key": key,
                    "uid": str(cols["uid"][i]),
                    "row": (cols["extra_info"][i] or {}).get("index"),
                    "data_source": cols["data_source"][i],
                    "truth": (cols["reward_model"][i] or {}).get("ground_truth"),
                    "prompt": _sha(cols["prompts"][i].tolist()),
                    "image": image_fingerprint(cols["multi_modal_inputs"][i]["pixel_values"]),
                    "response": self.tokenizer.decode(resp, skip_special_tokens=True),
                    "response_len": len(resp),
                    "score": float(cols["rm_scores"][i].float().sum()),
                    "advantage": float(cols["advantages"][i][0]) if len(resp) else 0.0,
                    "old_logp": float(old.sum()),
                    "new_logp": float(new_lp[i].float().sum()),
                    "weights_version": tag.get("max_global_steps"),
                    "fault": self._fault(),
                }
                if "rollout_log_probs" in cols:
                    roll = cols["rollout_log_probs"][i].float()
                    rec["rollout_logp"] = float(roll.sum())
                    rec["rollout_prob_diff"] = float((roll.exp() - old.exp()).abs().mean()) if len(resp) else 0.0
                lines.append(json.dumps(rec, default=str))
            path = self.trace_dir / f"step_{self.global_steps}.jsonl"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    register_trainer(TRAINER_MODE)(TracedTrainer)
    return TracedTrainer


TracedTrainer = _trainer_class()

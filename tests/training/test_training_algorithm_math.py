"""What each algorithm recipe makes verl compute: its advantages, its loss and its clip band.

The algorithm recipes are grpo_grounding's GRPO stage plus only algorithm keys
(test_an_algorithm_recipe_is_grpo_grounding_plus_only_its_own_keys). Those keys reach verl's
trainer through three places, and these tests run each with the recipe's own rehearsal config,
composed by Hydra from the very command `medrl rehearse` launches:

  - verl's config checks (`validate_config`, the actor and algorithm dataclasses);
  - `compute_advantage_for_multi_trajectories`, the v1 trainer's advantage step;
  - `ppo_loss`, the loss the actor's engine differentiates.

The expected numbers are computed here by hand from each algorithm's definition (the papers'
formulas), sharing no code with verl. So a recipe whose keys stop meaning its algorithm fails,
without a 2-minute verl launch per recipe: the launch itself (Ray, vLLM, FSDP, checkpoints,
merges) is the same for all of them and is rehearsed with grpo_grounding (inside sft_then_grpo)
and dapo_grounding.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medrl.training import recipes as R
from medrl.training import verl_command as C
from medrl.training.rehearse import rehearsal
from medrl.training.verl_keys import compose_verl_config

# The recipes proven here instead of by a verl launch each, and the only keys they may set: keys
# outside this list could reach code these tests do not run, so such a recipe must be rehearsed.
PROVEN_BY_ALGORITHM_MATH = {"gspo_grounding", "dr_grpo_grounding", "rloo_grounding", "reinforce_pp_grounding"}
ALGORITHM_MATH_KEYS = {
    "algorithm.adv_estimator", "algorithm.norm_adv_by_std_in_grpo", "actor_rollout_ref.actor.policy_loss.loss_mode",
    "actor_rollout_ref.actor.loss_agg_mode", "actor_rollout_ref.actor.loss_scale_factor",
    "actor_rollout_ref.actor.clip_ratio_low", "actor_rollout_ref.actor.clip_ratio_high",
}
# What each recipe claims to be, from the algorithms' papers: the advantage, how the loss averages
# tokens, and whether the ratio is one per answer (GSPO) or one per token.
INTENDED = {
    "grpo_grounding": ("group std", "token-mean", "token"),
    "dapo_grounding": ("group std", "token-mean", "token"),
    "gspo_grounding": ("group std", "answer-mean", "answer"),
    "dr_grpo_grounding": ("group mean", "answer-sum / budget", "token"),
    "rloo_grounding": ("leave one out", "token-mean", "token"),
    "reinforce_pp_grounding": ("batch whitened", "token-mean", "token"),
}
CHECKED = sorted(INTENDED)

# Two prompts' groups; answers of different lengths so that every aggregation mode differs.
SCORES = [0.9, 0.1, 0.5, 0.6, 0.2, 0.0, 1.0, 0.3]
LENGTHS = [3, 2, 4, 1, 4, 2, 3, 1]
PROMPT, WIDTH = 3, 4


def _config(name: str, tmp_path: Path):
    """verl's PPO config exactly as the recipe's rehearsal launches it (Hydra, the command's keys)."""
    cpu, _ = rehearsal(R.load_recipe(name), tmp_path)
    cpu = R.resolve_paths(cpu, tmp_path)
    cmd = C.build_command(cpu, cpu.stage("grpo"), tmp_path / "grpo", model_path=str(tmp_path / "model"))
    return compose_verl_config("ppo", [a for a in cmd if "=" in a and not a.startswith("--")])


def _batch(n: int):
    """Scores, response mask and uids for two groups of n answers (n from the recipe's config)."""
    scores, lengths = np.array(SCORES[: 2 * n]), np.array(LENGTHS[: 2 * n])
    mask = (np.arange(WIDTH)[None, :] < lengths[:, None]).astype(np.float32)
    uids = ["p0"] * n + ["p1"] * n
    return scores, lengths, mask, uids


def _hand_advantages(advantage: str, scores: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Each estimator's definition, per token (one outcome reward per answer, no discount)."""
    groups = scores.reshape(2, n)
    if advantage in ("group std", "group mean"):
        per = groups - groups.mean(1, keepdims=True)
        if advantage == "group std":  # GRPO: divided by the group's (unbiased) std
            per = per / (groups.std(1, ddof=1, keepdims=True) + 1e-6)
        return per.reshape(-1)[:, None] * mask
    if advantage == "leave one out":  # RLOO: each answer against the mean of the others in its group
        others = (groups.sum(1, keepdims=True) - groups) / (n - 1)
        return (groups - others).reshape(-1)[:, None] * mask
    if advantage == "batch whitened":  # REINFORCE++: returns whitened over every answer token of the batch
        returns = scores[:, None] * mask
        values = returns[mask > 0]
        return (returns - values.mean()) / math.sqrt(values.var(ddof=1) + 1e-8) * mask
    raise AssertionError(advantage)


def _hand_gradient(aggregation: str, adv: np.ndarray, lengths: np.ndarray, budget: int) -> np.ndarray:
    """d loss / d log-prob of each answer token at ratio 1 (the KL term's gradient is 0 there)."""
    rows = len(lengths)
    if aggregation == "token-mean":
        return -adv / lengths.sum()
    if aggregation == "answer-mean":
        return -adv / lengths[:, None] / rows
    if aggregation == "answer-sum / budget":  # Dr. GRPO: a constant (the answer budget), not each length
        return -adv / rows / budget
    raise AssertionError(aggregation)


def _verl_advantages(cfg, scores, mask, uids):
    from verl import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    rewards = torch.zeros(mask.shape)
    last = torch.tensor(mask.sum(1) - 1, dtype=torch.long)
    rewards[torch.arange(len(scores)), last] = torch.tensor(scores, dtype=torch.float32)
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": torch.tensor(mask)},
                               non_tensors={"uid": np.array(uids, dtype=object)})
    # The trainer's keys: "{uid}_{session}_{turn}", one session and turn per answer.
    keys = [f"{u}-{i}_0_0" for i, u in enumerate(uids)]
    out = compute_advantage_for_multi_trajectories(
        data, batch_keys=keys, adv_estimator=cfg.algorithm.adv_estimator, gamma=cfg.algorithm.gamma,
        lam=cfg.algorithm.lam, num_repeat=cfg.actor_rollout_ref.rollout.n,
        norm_adv_by_std_in_grpo=cfg.algorithm.get("norm_adv_by_std_in_grpo", True), config=cfg.algorithm)
    return out.batch["advantages"]


def _verl_loss_gradient(actor_config, adv, mask, lengths, shift: float = 0.0) -> np.ndarray:
    """The gradient of verl's `ppo_loss` w.r.t. each answer token's log-prob (unpadded, as the engine feeds it)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    rows = len(lengths)
    old = torch.linspace(-2.0, -0.5, rows * WIDTH).reshape(rows, WIDTH) * torch.tensor(mask)
    # The first token of each answer carries the whole shift: the answer's mean log-ratio is `shift`.
    new = old.clone()
    new[:, 0] += shift * torch.tensor(lengths, dtype=torch.float32)
    # The engine's flat log-probs: each sequence's prompt and answer tokens, left-shifted by one.
    pieces = [torch.cat([torch.full((PROMPT - 1,), -1.0), new[i, : lengths[i]], torch.full((1,), -1.0)])
              for i in range(rows)]
    flat = torch.cat(pieces).requires_grad_(True)
    data = TensorDict({"prompts": torch.ones(rows, PROMPT, dtype=torch.long),
                       "responses": torch.ones(rows, WIDTH, dtype=torch.long),
                       "attention_mask": torch.cat([torch.ones(rows, PROMPT), torch.tensor(mask)], 1).long(),
                       "response_mask": torch.tensor(mask), "old_log_probs": old, "advantages": adv,
                       "ref_log_prob": new.detach()}, batch_size=[rows])
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=rows)
    loss, _ = ppo_loss(actor_config, {"log_probs": flat}, data)
    loss.backward()
    grad = np.zeros((rows, WIDTH))
    at = 0
    for i in range(rows):
        grad[i, : lengths[i]] = flat.grad[at + PROMPT - 1: at + PROMPT - 1 + lengths[i]].numpy()
        at += PROMPT + int(lengths[i])
    return grad


def test_the_recipes_proven_here_set_only_keys_these_tests_reach():
    import yaml

    for name in PROVEN_BY_ALGORITHM_MATH:
        own = yaml.safe_load((R.REPO_ROOT / "recipes" / f"{name}.yaml").read_text())["stages"][0]["overrides"]
        assert set(own) <= ALGORITHM_MATH_KEYS, f"{name} sets {set(own) - ALGORITHM_MATH_KEYS}: rehearse it"


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    return {name: _config(name, tmp_path_factory.mktemp(name)) for name in CHECKED}


@pytest.mark.parametrize("name", CHECKED)
def test_verl_accepts_the_rehearsal_config(name, configs):
    from verl.trainer.main_ppo import validate_config
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass

    cfg = configs[name]
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    omega_conf_to_dataclass(cfg.algorithm)  # the dataclasses' own checks (verl builds both at start)
    omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


@pytest.mark.parametrize("name", CHECKED)
def test_verl_computes_each_recipes_advantages_and_loss_as_its_algorithm_defines(name, configs):
    from verl.utils.config import omega_conf_to_dataclass

    cfg, (advantage, aggregation, _) = configs[name], INTENDED[name]
    n = cfg.actor_rollout_ref.rollout.n
    scores, lengths, mask, uids = _batch(n)
    adv = _verl_advantages(cfg, scores, mask, uids)
    expected = _hand_advantages(advantage, scores, mask, n)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-4, atol=1e-6, err_msg=f"{name}: advantages")
    assert np.abs(expected).sum() > 0  # a batch with no signal would prove nothing

    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    # The hand gradient leaves out the KL loss: right only for penalties whose gradient is 0 where
    # policy = reference (k3 and k2, and any "+" straight-through variant, whose gradient is k2's; not k1).
    kl = cfg.actor_rollout_ref.actor.kl_loss_type
    assert not cfg.actor_rollout_ref.actor.use_kl_loss or kl.endswith("+") or kl in ("low_var_kl", "k3", "mse", "k2")
    grad = _verl_loss_gradient(actor, adv, mask, lengths)
    budget = R.load_recipe(name).stage("grpo").overrides["data.max_response_length"]  # the GPU recipe's
    np.testing.assert_allclose(grad, _hand_gradient(aggregation, expected, lengths, budget), rtol=1e-4, atol=1e-9,
                               err_msg=f"{name}: d loss / d log-prob")


@pytest.mark.parametrize("name", CHECKED)
def test_a_one_percent_rise_of_an_answer_is_clipped_only_under_gspo(name, configs):
    """An answer 1% likelier, all of it on its first token: GSPO's one ratio per answer (e^0.01) leaves
    its 4e-4 band, so a positive advantage stops pushing the whole answer; per-token PPO ratios
    (e^0.01*length, at most 1.04) stay inside the 0.2-0.28 bands of the others and keep pushing."""
    from verl.utils.config import omega_conf_to_dataclass

    cfg, ratio = configs[name], INTENDED[name][2]
    scores, lengths, mask, uids = _batch(cfg.actor_rollout_ref.rollout.n)
    adv = _verl_advantages(cfg, scores, mask, uids)
    grad = _verl_loss_gradient(omega_conf_to_dataclass(cfg.actor_rollout_ref.actor), adv, mask, lengths, shift=0.01)
    positive, negative = adv.numpy() > 1e-6, adv.numpy() < -1e-6
    assert positive.any() and negative.any()
    if ratio == "answer":
        assert np.all(grad[positive] == 0), f"{name}: the answer's ratio e^0.01 must be clipped"
    else:
        assert np.all(grad[positive] < 0), f"{name}: a token ratio of at most 1.04 must still be pushed"
    assert np.all(grad[negative] > 0), f"{name}: a negative advantage is never clipped on a rise"

"""The algorithm recipes (GSPO, DAPO, Dr. GRPO, RLOO, REINFORCE++) and the pre-launch algorithm checks.

Each recipe is grpo_grounding's GRPO stage plus only its own keys; each check fires on the fault it
names (injected as a command-line override) and stays silent on the shipped recipes.
"""

from __future__ import annotations

import json

import pytest
import yaml

from medrl.cli import main
from medrl.training import recipes as R
from medrl.training import verl_command as C
from medrl.training.algorithms import (ERROR, NOTE, WARNING, algorithm_name, check_algorithm, dapo_arithmetic,
                                       lookup, spread_from_metrics, stage_report)
from medrl.training.rehearse import rehearsal
from medrl.training.verl_keys import verl_default

ALGORITHMS = {"gspo_grounding": "GSPO", "dapo_grounding": "DAPO (GRPO + dynamic sampling)",
              "dr_grpo_grounding": "Dr. GRPO", "rloo_grounding": "RLOO", "reinforce_pp_grounding": "REINFORCE++"}


def _default(key):
    return verl_default("ppo", key)


def _findings(name, *overrides):
    stage = R.apply_overrides(R.load_recipe(name), list(overrides)).stage("grpo")
    return check_algorithm(stage.overrides, _default)


def _args(recipe, tmp_path):
    cmd = C.build_command(recipe, recipe.stage("grpo"), tmp_path / "grpo", model_path="/m")
    return dict(a.split("=", 1) for a in cmd if "=" in a and not a.startswith(("--", "trainer.experiment_name")))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_an_algorithm_recipe_is_grpo_grounding_plus_only_its_own_keys(name, tmp_path):
    own = yaml.safe_load((R.REPO_ROOT / "recipes" / f"{name}.yaml").read_text())["stages"][0]
    assert own["from"] == "grpo_grounding.yaml" and own["stage"] == "grpo"
    base, layered = _args(R.load_recipe("grpo_grounding"), tmp_path), _args(R.load_recipe(name), tmp_path)
    changed = {k: v for k, v in layered.items() if base.get(k) != v}
    assert changed == {k: C.hydra_value(v) for k, v in own["overrides"].items()}
    assert set(base) <= set(layered)  # nothing of the base is lost


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_a_shipped_algorithm_recipe_is_named_and_passes_its_checks(name):
    stage = R.load_recipe(name).stage("grpo")
    assert algorithm_name(lookup(stage.overrides, _default)) == ALGORITHMS[name]
    assert [f for f in check_algorithm(stage.overrides, _default) if f.level != NOTE] == []


@pytest.mark.parametrize("name", sorted(p.stem for p in (R.REPO_ROOT / "recipes").glob("*.yaml")))
def test_no_shipped_recipe_trips_a_check(name):
    """train, pipeline and rehearse refuse an error: every shipped RL stage must be free of them (and of warnings)."""
    recipe = R.load_recipe(name)
    for stage in (st for st in recipe.stages if st.trainer == "ppo"):
        assert [f.message for f in check_algorithm(stage.overrides, _default) if f.level != NOTE] == []


# (recipe, injected overrides, level, words the explanation must contain: the keys and their numbers)
FAULTS = [
    ("rloo_grounding", ["actor_rollout_ref.rollout.n=1"], ERROR, ["adv_estimator=rloo", "rollout.n=1"]),
    ("grpo_grounding", ["actor_rollout_ref.rollout.n=1"], ERROR, ["adv_estimator=grpo", "no baseline"]),
    ("dr_grpo_grounding", ["algorithm.adv_estimator=rloo"], ERROR, ["norm_adv_by_std_in_grpo=False", "rloo"]),
    ("dr_grpo_grounding", ["algorithm.adv_estimator=grpo_vectorized"], ERROR, ["does nothing", "grpo_vectorized"]),
    ("dr_grpo_grounding", ["actor_rollout_ref.actor.loss_scale_factor=null"], WARNING, ["padded width", "512"]),
    ("dapo_grounding", ["actor_rollout_ref.rollout.n=1"], ERROR, ["nothing is ever filtered"]),
    ("dapo_grounding", ["algorithm.filter_groups.metric=null"], ERROR, ["metric is empty"]),
    ("dapo_grounding", ["algorithm.filter_groups.metric=iou"], NOTE, ["metric=iou", "missing DAPO metric"]),
    ("dapo_grounding", ["trainer.v1.sampler.custom_sampler.path=pkg://medrl.training.quick_poll",
                        "trainer.v1.sampler.custom_sampler.name=QuickPollReplayBuffer"],
     ERROR, ["custom_sampler=QuickPollReplayBuffer", "no group would be filtered"]),
    ("dapo_grounding", ["trainer.use_v1=false"], ERROR, ["use_v1=False", "ignores"]),
    ("dapo_grounding", ["algorithm.filter_groups.max_num_gen_batches=10"], WARNING, ["max_num_gen_batches=10"]),
    ("dapo_grounding", ["data.gen_batch_size=384"], WARNING, ["gen_batch_size=384", "overridden to 1"]),
    ("dapo_grounding", ["reward.reward_manager.name=naive"], ERROR, ["reward_manager.name=naive"]),
    ("dapo_grounding", ["+reward.reward_kwargs.max_resp_len=1024"], WARNING,
     ["max_resp_len=1024", "max_response_length=512", "896"]),
    ("dapo_grounding", ["+reward.reward_kwargs.overlong_buffer_cfg.len=600"], ERROR, ["len=600", "max_resp_len=512"]),
    ("dapo_grounding", ["actor_rollout_ref.actor.clip_ratio_high=0.1"], WARNING,
     ["clip_ratio_high=0.1 < clip_ratio_low=0.2"]),
    ("gspo_grounding", ["actor_rollout_ref.actor.loss_agg_mode=token-mean"], WARNING, ["loss_agg_mode=token-mean"]),
    ("gspo_grounding", ["actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum"], ERROR,
     ["loss_agg_mode=seq-mean-token-sum", "seq-mean-token-mean"]),
    ("gspo_grounding", ["actor_rollout_ref.actor.clip_ratio_low=0.2", "actor_rollout_ref.actor.clip_ratio_high=0.2"],
     WARNING, ["[1-0.2, 1+0.2]", "never bind"]),
    ("grpo_grounding", ["algorithm.use_kl_in_reward=true"], WARNING, ["kl_coef=0.001", "kl_loss_coef=0.01"]),
    ("grpo_grounding", ["actor_rollout_ref.actor.clip_ratio=0.3"], ERROR, ["clip_ratio=0.3 is not used"]),
    ("grpo_grounding", ["actor_rollout_ref.actor.kl_loss_coef=0"], WARNING, ["kl_loss_coef=0", "reference"]),
]


@pytest.mark.parametrize("name,overrides,level,words", FAULTS, ids=[f"{f[0]}:{f[1][0]}" for f in FAULTS])
def test_each_check_fires_on_its_fault_and_not_without_it(name, overrides, level, words):
    def hits(found):
        return [f for f in found if f.level == level and all(w in f.message for w in words)]

    assert hits(_findings(name)) == []
    assert hits(_findings(name, *overrides)), [f.message for f in _findings(name, *overrides)]


def test_dynamic_sampling_arithmetic_names_the_numbers():
    unknown = dapo_arithmetic(batch=128, n=5, inflight=1)
    assert unknown.level == NOTE
    assert all(w in unknown.message for w in ("train_batch_size=128", "128/p prompts (640/p answers)",
                                              "p=0.5 -> 256", "p=0.1 -> 1280", "never ends"))
    assert "below p = 0.43" in dapo_arithmetic(128, 5, 1, train_rows=300).message
    assert dapo_arithmetic(128, 5, 1, spread=0.0).level == ERROR
    measured = dapo_arithmetic(128, 5, 2, spread=0.5, train_rows=10_000)
    assert measured.level == NOTE and "about 256 prompts (1280 answers)" in measured.message
    assert "= 256 prompts at a time" in measured.message  # 2 batches in flight
    too_hard = dapo_arithmetic(128, 5, 1, spread=0.25, train_rows=300)
    assert too_hard.level == WARNING and "about 512 prompts" in too_hard.message and "300 rows" in too_hard.message


def test_the_spread_is_measured_from_an_earlier_dapo_runs_metrics(tmp_path):
    step = {"timing_s/step": 10.0}
    rows = [{"step": 0, "val-core/x": 0.1},  # validation only: not a training step
            {**step, "training/filter_groups/evicted_samples": 384},  # 128 kept, 384 evicted
            {**step, "training/filter_groups/evicted_samples": 96,
             "training/filter_groups/discarded_surplus_samples": 32}]
    assert spread_from_metrics(rows, batch=128) == pytest.approx((128 + 160) / (512 + 256))
    assert spread_from_metrics(rows[:1], batch=128) is None
    # stage_report reads the stage folder of the same run: 3 steps that each evicted 3 groups per kept one.
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({**step, "training/filter_groups/evicted_samples": 384}) for _ in range(3)) + "\n{cut")
    recipe = R.load_recipe("dapo_grounding")
    lines, found = stage_report(recipe, recipe.stage("grpo"), tmp_path)
    assert any("Measured p=0.25" in f.message and "about 512 prompts" in f.message for f in found)


def test_dry_run_prints_the_algorithm_keys_and_an_error_stops_it(tmp_path, capsys):
    assert main(["train", "gspo_grounding", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    head = out[:out.index("verl.trainer.main_ppo")]
    assert "# algorithm: GSPO; the verl keys that set it:" in head
    assert "#   actor_rollout_ref.actor.policy_loss.loss_mode=gspo" in head
    assert "#   actor_rollout_ref.actor.clip_ratio_low=0.0003" in head
    assert "#   actor_rollout_ref.rollout.name=vllm" not in head  # not an algorithm key
    assert main(["train", "rloo_grounding", "actor_rollout_ref.rollout.n=1", "--dry-run", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "make no sense" in captured.err and "rollout.n=1" in captured.err
    assert "verl.trainer.main_ppo" not in captured.out


def test_rehearse_prints_the_gpu_recipes_algorithm_and_refuses_its_errors(tmp_path, capsys):
    assert main(["rehearse", "dapo_grounding", "--dry-run", "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "stage grpo of the GPU recipe:\n# algorithm: DAPO" in out
    assert "train_batch_size=128 groups whose rollout.n=5 answers" in out  # the GPU's numbers, not the rehearsal's
    assert main(["rehearse", "gspo_grounding", "actor_rollout_ref.actor.loss_agg_mode=token-sum", "--dry-run",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "loss_agg_mode=token-sum" in capsys.readouterr().err


def test_a_dapo_rehearsal_lists_what_a_random_model_and_short_answers_change(tmp_path):
    _, changes = rehearsal(R.load_recipe("dapo_grounding"), tmp_path)
    by_key = {c.key: c for c in changes if c.where == "grpo"}
    assert by_key["algorithm.filter_groups.enable"].new is False
    assert "generate forever" in by_key["algorithm.filter_groups.enable"].why
    limit = by_key["reward.reward_kwargs.max_resp_len"]
    assert (limit.old, limit.new) == (512, 48)
    assert by_key["reward.reward_kwargs.overlong_buffer_cfg.len"].new == 12  # 128/512 of 48
    _, grpo_changes = rehearsal(R.load_recipe("grpo_grounding"), tmp_path)
    assert not [c for c in grpo_changes if "filter_groups" in c.key or "reward_kwargs" in c.key]

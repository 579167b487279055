"""benchmarks/bench_learning.py: reward and algorithm arms, the arm list, the comparison table and re-scored curves
(no trainer runs)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import import_benchmark
import yaml

from medrl.training import learning

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return import_benchmark("bench_learning")


def test_reward_arms_name_spec_files(bench, tmp_path):
    arms = bench.reward_arms("shipped, iou,giou,f1iou")
    assert arms == {"grpo": REPO / "recipes/rewards/grounding.yaml",
                    "grpo_iou": REPO / "recipes/rewards/candidates/iou.yaml",  # IoU + format, not the shipped spec
                    "grpo_giou": REPO / "recipes/rewards/candidates/giou.yaml",
                    "grpo_f1iou": REPO / "recipes/rewards/candidates/f1iou.yaml"}
    own = tmp_path / "mine.yaml"
    own.write_text("routes: {medrl/grounding: {iou: 1.0}}\n")
    assert bench.reward_arms(str(own)) == {"grpo_mine": own}
    with pytest.raises(ValueError, match=r"'ciou' is neither .*shipped, f1iou.*iou_size"):
        bench.reward_arms("shipped,ciou")
    with pytest.raises(ValueError, match="given twice"):
        bench.reward_arms("giou,giou")
    assert bench.reward_arms(None) == {}


def test_grpo_stands_for_every_reward_arm(bench):
    rewards = bench.reward_arms("shipped,giou")
    assert bench.arm_list(["grpo", "shuffled", "sft"], rewards) == ["grpo", "grpo_giou", "shuffled", "sft"]
    assert bench.arm_list(["shuffled", "grpo"], {}) == ["shuffled", "grpo"]


def _recipe_keys(name: str) -> dict:
    """The overrides recipes/<name>_grounding.yaml writes on the stage it takes from grpo_grounding (read as YAML)."""
    (stage,) = yaml.safe_load((REPO / "recipes" / f"{name}_grounding.yaml").read_text())["stages"]
    assert (stage["from"], stage["stage"]) == ("grpo_grounding.yaml", "grpo")
    return stage["overrides"]


def _arm_stage(bench, tmp_path, algorithm, extra=()) -> dict:
    """The GRPO stage overrides an arm launches with."""
    keys = bench.grpo_keys(tmp_path / "arm", 0, 60.0, 5, list(extra), algorithm)
    return bench.keys_as_run(keys, tmp_path).stage("grpo").overrides


@pytest.mark.parametrize("name", ["gspo", "dr_grpo", "rloo", "reinforce_pp"])
def test_an_algorithm_arm_is_the_grpo_arm_plus_exactly_its_recipes_keys(bench, tmp_path, name):
    added = bench.algorithm_arms(name)[name]
    assert added == _recipe_keys(name)
    plain, arm = _arm_stage(bench, tmp_path, None), _arm_stage(bench, tmp_path, added)
    assert {k: v for k, v in arm.items() if plain.get(k, "unset") != v} == _recipe_keys(name)
    assert set(plain) <= set(arm)
    assert bench.algorithm_arms("grpo") == {"grpo": {}}


def test_the_dapo_arm_is_shrunk_as_the_rehearsal_shrinks_it(bench, tmp_path):
    recipe = _recipe_keys("dapo")
    tiny = yaml.safe_load((REPO / "recipes" / "cpu_tiny.yaml").read_text())
    (response,) = [st["overrides"]["data.max_response_length"] for st in tiny["stages"] if st["name"] == "grpo"]
    buffer, limit = recipe["+reward.reward_kwargs.overlong_buffer_cfg.len"], recipe["+reward.reward_kwargs.max_resp_len"]
    assert recipe["algorithm.filter_groups.enable"] is True and limit > response
    for extra, length in (((), response), (("data.max_response_length=64",), 64)):
        arm = _arm_stage(bench, tmp_path, bench.algorithm_arms("dapo")["dapo"], extra)
        assert arm["algorithm.filter_groups.enable"] is False
        assert arm["+reward.reward_kwargs.max_resp_len"] == length == arm["data.max_response_length"]
        assert arm["+reward.reward_kwargs.overlong_buffer_cfg.len"] == buffer * length // limit
        kept = [k for k in recipe if k not in ("algorithm.filter_groups.enable", "+reward.reward_kwargs.max_resp_len",
                                               "+reward.reward_kwargs.overlong_buffer_cfg.len")]
        assert {k: arm[k] for k in kept} == {k: recipe[k] for k in kept}


def test_algorithm_arm_names_are_checked(bench, tmp_path):
    with pytest.raises(ValueError, match=r"'ppo' is not one of grpo, gspo, dapo, dr_grpo, rloo, reinforce_pp"):
        bench.algorithm_arms("grpo,ppo")
    with pytest.raises(ValueError, match="given twice"):
        bench.algorithm_arms("rloo, rloo")
    arms = bench.algorithm_arms("grpo,gspo")
    assert bench.arm_list(["grpo", "shuffled"], bench.reward_arms("shipped,giou"), arms) == [
        "grpo", "grpo_giou", "gspo", "shuffled"]
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_learning.py"), "--algorithm-arms",
                          "gspo,ppo", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "'ppo' is not one of" in out.stderr and not (tmp_path / "run").exists()


def test_prelaunch_check_passes_the_shipped_arms_and_stops_on_an_error_naming_the_algorithm(bench, tmp_path):
    lines = bench.check_arms(bench.algorithm_arms("dr_grpo,reinforce_pp"), [], tmp_path)
    assert "arm dr_grpo:" in lines and "# algorithm: Dr. GRPO; the verl keys that set it:" in lines
    assert "#   algorithm.adv_estimator=reinforce_plus_plus" in lines
    with pytest.raises(ValueError, match=r"the rloo arm's keys fail .*\n  adv_estimator=rloo .* rollout.n=1"):
        bench.check_arms(bench.algorithm_arms("rloo"), ["actor_rollout_ref.rollout.n=1"], tmp_path)


def test_rescored_curve_measures_every_arm_by_eval_rules(tmp_path):
    stage = tmp_path / "grpo_giou"
    (stage / learning.VALIDATION_DIR).mkdir(parents=True)
    rows = [  # a giou-trained arm: its dump has no `iou` key; figures come from the answers
        {"output": "<answer>[0, 0, 0.25, 0.25]</answer>", "gts": "[[0, 0, 0.25, 0.25]]", "score": 0.9},   # IoU 1
        {"output": "<answer>[0, 0, 0.5, 0.5]</answer>", "gts": "[[0, 0, 0.25, 0.25]]", "score": 0.6},     # IoU 1/4
        {"output": "<answer>No abnormalities are detected.</answer>", "gts": "[]", "score": 0.7},          # hit, no IoU
        {"output": "<answer>[0, 0, 0.5, 0.5]</answer>", "gts": "[]", "score": 0.0}]                         # miss
    (stage / learning.VALIDATION_DIR / "0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (p,) = learning.grpo_curve(stage, rescore=True)
    assert (p.miou, p.acc50, p.reward, p.n) == (pytest.approx(0.625), 0.5, pytest.approx(0.55), 4)
    (q,) = learning.grpo_curve(stage)  # the reward's own `iou` key: absent, so every row counts 0
    assert q.miou == 0.0


def test_plot_curves_draws_acc50_for_many_arms(tmp_path):
    curve = [learning.ValPoint(0, 0.0, 0.2, 0.1, 0.2, 3), learning.ValPoint(5, 60.0, 0.3, 0.2, 0.3, 3)]
    path = learning.plot_curves({f"arm{i}": [curve] for i in range(6)}, tmp_path / "acc.png", "acc", metric="acc50")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_runs():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_learning.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--reward-arms" in out.stdout and "--data {one,vindr}" in out.stdout
    assert "--algorithm-arms" in out.stdout and "--test N" in out.stdout


def test_step_seconds_is_the_median_of_verls_step_time(bench, tmp_path):
    records = [{"step": 0, "data": {"val-core/x": 1.0}}] + [
        {"step": s, "data": {"timing_s/step": t}} for s, t in ((1, 30.0), (2, 10.0), (3, 12.0))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert bench.step_seconds(tmp_path) == 12.0
    assert math.isnan(bench.step_seconds(tmp_path / "none"))


@pytest.mark.parametrize("mix", ["one", "vindr"])
def test_the_grpo_arms_response_length_fits_every_answer_of_its_data_set(bench, tmp_path, tiny_model_dir, mix):
    """The bench's data (the real sample generator and converter) against the length its GRPO arms run with."""
    from medrl.cli import main
    from medrl.training.answer_length import parquet_answer_fit
    from medrl.training.recipes import load_recipe

    assert main(["prepare", "sample", "--grounding", "--answer", "short", "--mix", mix, "--n", "60", "--seed", "3",
                 "--out", str(tmp_path / "src")]) == 0
    assert main(["prepare", "grounding", str(tmp_path / "src" / "grounding.json"), "--split_name", "train",
                 "--output_dir", str(tmp_path / "data"), "--no_progress"]) == 0
    limit = bench.RESPONSE_LENGTH[mix] or load_recipe("cpu_tiny").stage("grpo").overrides["data.max_response_length"]
    fit = parquet_answer_fit(str(tmp_path / "data" / "train.parquet"), str(tiny_model_dir), limit)
    assert fit.rows == 60 and fit.over == 0, fit.warning(mix)
    assert fit.longest <= learning.evaluate.__defaults__[-1]  # the final evaluation does not cut them either


def test_a_budgeted_sft_arm_stops_only_once_a_checkpoint_past_the_budget_is_saved(bench):
    seen = {1: 0.0, 2: 40.0, 3: 70.0, 4: 95.0, 5: 130.0}  # {step: seconds since step 1}
    assert not bench.budget_done(seen, None, None)
    assert bench.budget_done({1: 0.0, 2: 65.0}, 60.0, None)  # no checkpoints asked for: at the budget
    assert not bench.budget_done({1: 0.0, 2: 40.0}, 60.0, None)
    # saves every 2 steps, budget 60 s: step 4 is the first save past it; verl logs step 4, then saves it,
    # so the trainer may stop once step 5 is logged, not at step 3 (past the budget, nothing saved yet)
    assert not bench.budget_done({k: seen[k] for k in (1, 2, 3)}, 60.0, 2)
    assert not bench.budget_done({k: seen[k] for k in (1, 2, 3, 4)}, 60.0, 2)
    assert bench.budget_done(seen, 60.0, 2)


def test_start_gives_every_seed_one_model_or_each_its_own(bench):
    assert bench.start_for(None, 1) is None
    assert bench.start_for(["a"], 2) == Path("a").resolve()
    assert bench.start_for(["a", "b", "c"], 1) == Path("b").resolve()
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_learning.py"), "--seeds", "3",
                          "--start", "a", "b"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "one model for every seed or one per seed (3), not 2" in out.stderr


def test_the_sft_arm_anneals_over_the_steps_asked_and_scores_every_checkpoint(bench, tmp_path, monkeypatch):
    asked = {}

    def run_stage(stage, overrides, stage_dir, model, data, train_budget_s=None, save_every=None):
        asked.update(stage=stage, overrides=overrides, budget=train_budget_s, save_every=save_every)
        for step in (500, 1000, 1200):  # verl saves every 500 steps and at its last step
            (stage_dir / "checkpoints" / f"global_step_{step}").mkdir(parents=True)
        return {500: 100.0, 1000: 200.0, 1200: 240.0}

    monkeypatch.setattr(bench, "run_stage", run_stage)
    monkeypatch.setattr(bench, "merged", lambda stage, stage_dir, step: stage_dir / f"merged_{step}")
    monkeypatch.setattr(bench.learning, "evaluate", lambda model, val, out, spec, step, train_s:
                        bench.learning.ValPoint(step, train_s, 0.1, 0.2, 0.3, 5))
    got = bench.sft_arm(tmp_path, tmp_path / "start", 1, 600.0, {"val": "v"}, 500, schedule_steps=1200)
    assert asked["stage"] == "sft" and asked["budget"] == 600.0 and asked["save_every"] == 500
    assert "trainer.total_training_steps=1200" in asked["overrides"] and "trainer.save_freq=500" in asked["overrides"]
    assert [p.step for p in got["curve"]] == [500, 1000, 1200] and got["final"].train_s == 240.0
    bench.sft_arm(tmp_path / "default", tmp_path / "start", 1, 600.0, {"val": "v"}, 500)
    assert f"trainer.total_training_steps={bench.SFT_SCHEDULE_STEPS}" in asked["overrides"]

"""benchmarks/bench_learning.py: reward and algorithm arms, the arm list, the comparison table and re-scored curves
(no trainer runs)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medrl.training import learning

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_learning
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench_learning


def test_reward_arms_name_spec_files(bench, tmp_path):
    arms = bench.reward_arms("iou, giou,f1iou")
    assert arms == {"grpo": REPO / "recipes/rewards/grounding.yaml",
                    "grpo_giou": REPO / "recipes/rewards/candidates/giou.yaml",
                    "grpo_f1iou": REPO / "recipes/rewards/candidates/f1iou.yaml"}
    own = tmp_path / "mine.yaml"
    own.write_text("routes: {medrl/grounding: {iou: 1.0}}\n")
    assert bench.reward_arms(str(own)) == {"grpo_mine": own}
    with pytest.raises(ValueError, match=r"'ciou' is neither .*iou_size"):
        bench.reward_arms("iou,ciou")
    with pytest.raises(ValueError, match="given twice"):
        bench.reward_arms("giou,giou")
    assert bench.reward_arms(None) == {}


def test_grpo_stands_for_every_reward_arm(bench):
    rewards = bench.reward_arms("iou,giou")
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
    assert bench.arm_list(["grpo", "shuffled"], bench.reward_arms("iou,giou"), arms) == [
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


def _final(miou, acc50, step=10):
    return {"step": step, "train_s": 600.0, "miou": miou, "acc50": acc50, "reward": miou, "n": 3}


def _scores(folder: Path, ratios: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    t = [0.0, 0.0, 0.25, 0.25]
    rows = [{"pred_boxes": [[0.0, 0.0, 0.25, 0.25 * r]], "true_boxes": [t]} for r in ratios]
    (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_gives_min_median_max_over_seeds_and_margins_over_shuffled(bench, tmp_path):
    results = {}
    figures = {0: {"start": (0.30, 0.20), "grpo": (0.35, 0.22), "grpo_giou": (0.40, 0.30), "shuffled": (0.28, 0.18)},
               1: {"start": (0.26, 0.10), "grpo": (0.33, 0.12), "grpo_giou": (0.30, 0.16), "shuffled": (0.27, 0.11)},
               2: {"start": (0.28, 0.16), "grpo": (0.30, 0.16), "grpo_giou": (0.36, 0.24), "shuffled": (0.20, 0.09)}}
    areas = {"start": [1.2, 1.2], "grpo": [2.0, 2.0], "grpo_giou": [1.0, 1.0], "shuffled": [3.0, 3.0]}
    for seed, arms in figures.items():
        results[seed] = {"start": _final(*arms["start"], step=0)}
        for arm, (miou, acc) in arms.items():
            if arm != "start":
                results[seed][arm] = {"curve": [], "final": _final(miou, acc)}
            ratios = [r * (1 + seed / 10) for r in areas[arm]]  # seed 0, 1, 2: x1.0, x1.1, x1.2
            _scores(bench.final_eval_dir(tmp_path, seed, arm, results[seed]), ratios)
    text = bench.table(results, ["grpo", "grpo_giou", "shuffled"], tmp_path)
    lines = {line.split()[0]: line for line in text.splitlines()[2:6]}
    # grpo_giou: mIoU 0.30/0.36/0.40, gain +0.04/+0.08/+0.10, acc@0.5 0.16/0.24/0.30, gain +0.06/+0.08/+0.10
    assert lines["grpo_giou"].split()[2:7] == ["0.300/0.360/0.400", "+0.040/+0.080/+0.100", "0.160/0.240/0.300",
                                               "+0.060/+0.080/+0.100", "1.00/1.10/1.20"]
    assert lines["grpo"].split()[-2:] == ["2.00/2.20/2.40", "-"]  # s/step: none recorded in these results
    assert lines["start"].split()[-1] == "1.20/1.32/1.44"
    assert "grpo_giou mIoU minus shuffled mIoU, per seed: +0.120, +0.030, +0.160" in text
    assert "grpo mIoU minus shuffled mIoU, per seed: +0.070, +0.060, +0.100" in text
    assert "shuffled mIoU minus" not in text
    # Issue 23's targets, worst seed: giou gains acc +0.06 and mIoU +0.04, areas 1.00..1.20, over shuffled +0.03.
    assert ("grpo_giou targets, worst seed: acc@0.5 gain +0.060 (met); mIoU gain +0.040 (missed by 0.010); "
            "box/true area in [0.8, 1.25]: 1.00..1.20 (met); mIoU over shuffled +0.030 (>= +0.04: missed by 0.010)"
            in text)
    assert "grpo targets, worst seed: acc@0.5 gain +0.000 (missed by 0.050)" in text
    assert "box/true area in [0.8, 1.25]: 2.00..2.40 (missed by 1.15)" in text


def test_table_gives_each_seeds_paired_change_against_its_start(bench, tmp_path):
    def scored(folder: Path, ious: list, accs: list) -> None:  # medrl eval's rows: key, metrics (None: no finding)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"key": f"{i}:r", "metrics": {"iou": iou, "acc@0.5": acc}, "pred_boxes": [], "true_boxes": []}
                for i, (iou, acc) in enumerate(zip(ious, accs))]
        (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    results = {0: {"start": _final(0.3, 0.5, step=0), "grpo": {"curve": [], "final": _final(0.4, 0.75)}}}
    scored(bench.final_eval_dir(tmp_path, 0, "start", results[0]), [0.2, 0.4, None, None], [0, 0, 1, 1])
    # IoU diffs +0.3, +0.1 on the boxed rows (mean +0.2, SE 0.1): noise; acc diffs 1, 0, 0, 0 (mean 0.25, SE 0.25)
    scored(bench.final_eval_dir(tmp_path, 0, "grpo", results[0]), [0.5, 0.5, None, None], [1, 0, 1, 1])
    text = bench.table(results, ["grpo"], tmp_path)
    assert "  grpo           mIoU +0.200 (0.100, noise); acc@0.5 +0.250 (0.250, noise)" in text
    scored(bench.final_eval_dir(tmp_path, 0, "grpo", results[0]), [0.6, 0.8, None, None], [1, 1, 1, 1])
    assert "mIoU +0.400 (0.000, up); acc@0.5 +0.500 (0.289, noise)" in bench.table(results, ["grpo"], tmp_path)


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
    assert "--algorithm-arms" in out.stdout


def test_table_gives_every_grpo_arms_seconds_per_step(bench, tmp_path):
    results = {}
    for seed in (0, 1):
        results[seed] = {"start": _final(0.3, 0.2, step=0),
                         "grpo": {"curve": [], "final": _final(0.35, 0.25), "s_step": 10.0 + seed},
                         "dapo": {"curve": [], "final": _final(0.40, 0.30), "s_step": 12.5 + 2 * seed},
                         "sft": {"curve": [], "final": _final(0.31, 0.21)}}
        for arm in results[seed]:
            _scores(bench.final_eval_dir(tmp_path, seed, arm, results[seed]), [1.0])
    text = bench.table(results, ["grpo", "dapo", "sft"], tmp_path).splitlines()
    header = text[1].split()
    assert header[-1] == "s/step"
    rows = {line.split()[0]: line.split() for line in text[2:6]}
    assert rows["grpo"][-1] == "10.00/10.50/11.00" and rows["dapo"][-1] == "12.50/13.50/14.50"
    assert len(rows["sft"]) == len(rows["grpo"]) - 1 and rows["sft"][-1] == "1.00/1.00/1.00"  # SFT: no verl step time


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

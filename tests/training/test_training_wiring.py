"""The GRPO wiring check: one traced verl run, a clean step and one injected fault per later step.

The run is verl's real trainer (`trainer.v1.trainer_mode=medrl_traced`), its real dataset, agent
loop, vLLM rollout and reward loop, on the tiny model and the bundled sample. Faults are injected
inside the loop where real bugs would sit (`medrl.training.wiring_trace`):

  step 1  clean                 every check passes
  step 2  shuffle_rewards       rewards moved to other rollouts after scoring
  step 3  swap_images           each prompt sent with the next row's image
  step 4  mix_groups            one rollout of each GRPO group moved into the next group
  step 5  stale_weights         the weight sync before step 5 skipped

A random-init policy earns 0 IoU everywhere, so every advantage would be 0: the run scores with a
reward that gives each (answer, ground truth) pair a fixed pseudo-random value. It goes through
verl's custom-reward path like medrl's own, and any mix-up of answers and truths changes it.
About 3-4 minutes, most of it verl's start-up; peak about 8 GB.

The fast tests below check each check on hand-made records, so that a check that can never fail
is caught without a verl run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from medrl.training import wiring

TOY_REWARD = '''
import hashlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return int(hashlib.md5(f"{solution_str}|{ground_truth}".encode()).hexdigest()[:8], 16) / 16**8
'''
FAULTS = "2:shuffle_rewards,3:swap_images,4:mix_groups,5:stale_weights"
GROUPS, GROUP_SIZE = 4, 4
WIRING_SIZES = (f"data.train_batch_size={GROUPS}", f"actor_rollout_ref.rollout.n={GROUP_SIZE}",
                f"actor_rollout_ref.actor.ppo_mini_batch_size={GROUPS}",  # one update per step, as cpu_tiny
                # As cpu_tiny, a rank's whole share (of its 2 ranks) in one micro-batch.
                f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={GROUPS * GROUP_SIZE // 2}",
                f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={GROUPS * GROUP_SIZE // 2}")


# ---- fast: each check on hand-made records ---------------------------------------------------

def _rec(uid, row, score, adv, old, new, image=(0.0,), prompt="p", version=0, key=None):
    return {"key": key or f"{uid}_{row}_{score}", "uid": uid, "row": row, "truth": f"[[{row}]]", "prompt": prompt,
            "image": list(image), "response": "a", "score": score, "true_score": score, "advantage": adv,
            "old_logp": old, "new_logp": new, "weights_version": version, "rollout_prob_diff": 1e-6}


def _group(uid, row, scores, image=(0.0,), gains=None):
    gains = gains or [s - sum(scores) / len(scores) for s in scores]  # follows the rewards
    mean = sum(scores) / len(scores)
    return [_rec(uid, row, s, s - mean, -10.0, -10.0 + g, image, prompt=f"p{row}", key=f"{uid}_{i}_0")
            for i, (s, g) in enumerate(zip(scores, gains))]


ROWS = wiring.Rows(truth={0: "[[0]]", 1: "[[1]]"}, extra={0: {}, 1: {}}, data_source={0: "d", 1: "d"},
                   image={0: [0.0], 1: [0.5]})


def _clean():
    return _group("a", 0, [0.1, 0.9, 0.5], image=(0.0,)) + _group("b", 1, [0.3, 0.2, 0.8], image=(0.5,))


def test_checks_pass_on_clean_records():
    recs = _clean()
    assert wiring.check_reward_truth(recs, ROWS).passed
    assert wiring.check_groups(recs, 3).passed
    assert wiring.check_image_row(recs, ROWS).passed
    assert wiring.check_advantage_order(recs).passed
    assert wiring.check_update_direction(recs).passed
    assert wiring.check_rollout_sync(recs, 1).passed


def test_reward_truth_fails_when_a_reward_belongs_to_another_rollout():
    recs = _clean()
    recs[0]["score"], recs[1]["score"] = recs[1]["score"], recs[0]["score"]
    assert not wiring.check_reward_truth(recs, ROWS).passed
    recs = _clean()
    recs[0]["truth"] = "[[1]]"  # the rollout carried the other row's ground truth
    assert "another row's ground truth" in wiring.check_reward_truth(recs, ROWS).detail


def test_groups_fail_on_mixed_rows_prompts_images_or_sizes():
    recs = _clean()
    recs[0]["uid"] = "b"
    assert not wiring.check_groups(recs, 3).passed
    recs = _clean()
    recs[0]["image"] = [0.5]
    assert "mixes images" in wiring.check_groups(recs, 3).detail
    assert not wiring.check_groups(_clean()[:5], 3).passed


def test_image_row_names_whose_image_a_rollout_saw():
    recs = _clean()
    for r in recs[:3]:
        r["image"] = [0.5]
    check = wiring.check_image_row(recs, ROWS)
    assert not check.passed and "row 1's image" in check.detail


def test_advantage_order_fails_when_advantages_do_not_follow_rewards():
    recs = _clean()
    recs[0]["advantage"], recs[1]["advantage"] = recs[1]["advantage"], recs[0]["advantage"]
    assert not wiring.check_advantage_order(recs).passed


def test_update_direction_fails_when_the_update_favours_the_worst():
    recs = _group("a", 0, [0.1, 0.9], gains=[0.5, -0.5]) + _group("b", 1, [0.8, 0.2], gains=[-0.1, 0.1])
    assert not wiring.check_update_direction(recs).passed
    flat = _group("a", 0, [0.5, 0.5])
    assert "nothing to learn from" in wiring.check_update_direction(flat).detail


def test_rollout_sync_fails_on_stale_version_or_disagreeing_probabilities():
    recs = _clean()
    assert not wiring.check_rollout_sync(recs, 2).passed  # version 0 at step 2: one sync missed
    recs[0]["rollout_prob_diff"] = 0.05
    assert not wiring.check_rollout_sync(recs, 1).passed


def test_parse_faults_refuses_unknown_names():
    assert wiring.parse_faults(FAULTS) == {2: "shuffle_rewards", 3: "swap_images", 4: "mix_groups",
                                           5: "stale_weights"}
    with pytest.raises(ValueError):
        wiring.parse_faults("2:typo")


# ---- slow: one traced verl run ----------------------------------------------------------------

@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from medrl.training.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("wiring")
    reward = tmp / "toy_reward.py"
    reward.write_text(TOY_REWARD)
    model = build_tiny_model(tmp / "model")
    subprocess.run([sys.executable, "-m", "medrl.cli", "prepare", "grounding", "examples/sample/sample.json",
                    "--dataset_filter", "vindr-cxr", "chest-imagenome", "--output_dir", str(tmp / "data"),
                    "--no_progress"], check=True, capture_output=True)
    trace, recipe = wiring.run_traced(
        str(model), str(tmp / "data" / "train.parquet"), tmp / "run", steps=5, faults=FAULTS,
        # cpu_tiny's GRPO with a smaller batch: groups, images, rewards and the weight sync travel
        # the same code at any size (cpu_tiny's own 16 x 8 runs in the e2e test), and 4 groups of
        # 4 took the five steps from 96 s to about 30. The bundled sample's prompts are up to 406
        # tokens (cpu_tiny's generated data: about 80).
        overrides=(f"reward.path={reward}", "data.max_prompt_length=448", "data.max_response_length=24",
                   *WIRING_SIZES),
        echo=lambda line: print(line, flush=True))
    reps = wiring.check_run(trace, recipe)
    print(wiring.format_report(reps))
    return {r.step: r for r in reps}


@pytest.mark.slow
def test_clean_step_passes_every_check(reports):
    rep = reports[1]
    assert rep.fault is None
    assert rep.passed, wiring.format_report([rep])
    assert f"{GROUPS} groups of {GROUP_SIZE}:" in rep.check("groups").detail


@pytest.mark.slow
def test_shuffled_rewards_are_caught(reports):
    rep = reports[2]
    assert rep.fault == "shuffle_rewards"
    assert not rep.check("reward_truth").passed
    assert rep.check("groups").passed and rep.check("image_row").passed


@pytest.mark.slow
def test_swapped_images_are_caught(reports):
    rep = reports[3]
    assert rep.fault == "swap_images"
    assert not rep.check("image_row").passed
    assert "image" in rep.check("image_row").detail
    assert rep.check("reward_truth").passed  # the rewards still went to the right rollouts


@pytest.mark.slow
def test_groups_mixed_across_prompts_are_caught(reports):
    rep = reports[4]
    assert rep.fault == "mix_groups"
    assert not rep.check("groups").passed


@pytest.mark.slow
def test_stale_rollout_weights_are_caught(reports):
    rep = reports[5]
    assert rep.fault == "stale_weights"
    assert not rep.check("rollout_sync").passed
    assert "stale" in rep.check("rollout_sync").detail

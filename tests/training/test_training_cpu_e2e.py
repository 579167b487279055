"""End to end on CPU with verl's real trainers: SFT (torchrun, 2 gloo ranks) -> merge -> GRPO -> merge.

One run of `medrl.training.pipeline` with the cpu_tiny recipe cut to 2 steps per stage, then a
resume: the GRPO stage started again with one more step continues from its last checkpoint.
Peak host memory is about 8 GB during GRPO; never run two of these at once.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("verl")

SHORT = [
    "sft.trainer.total_training_steps=2",
    "sft.trainer.test_freq=2",
    "grpo.trainer.total_training_steps=2",
    "grpo.trainer.save_freq=1",
    "grpo.trainer.test_freq=2",
    "grpo.trainer.val_before_train=False",
    "grpo.data.max_response_length=24",
]


def _metrics(path):
    steps = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        steps.setdefault(rec["step"], {}).update(rec["data"])
    return steps


# A random-init policy scores 0 on IoU and format, so every GRPO advantage would be 0 and the
# actor would not move. This reward (verl's custom-reward path, like medrl's own) gives each
# distinct answer a fixed pseudo-random score in [0, 1), so the update is real.
TOY_REWARD = """
import hashlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return int(hashlib.md5(solution_str.encode()).hexdigest()[:8], 16) / 16**8
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from medrl.training.pipeline import run_pipeline
    from medrl.training.recipes import apply_overrides, load_recipe

    out = tmp_path_factory.mktemp("cpu-run")
    reward = tmp_path_factory.mktemp("reward") / "toy_reward.py"
    reward.write_text(TOY_REWARD)
    recipe = apply_overrides(load_recipe("cpu_tiny"), SHORT + [f"reward.path={reward}"])
    manifest = run_pipeline(recipe, out, echo=lambda line: print(line, flush=True))
    return out, recipe, manifest


@pytest.mark.slow
def test_sft_ran_two_steps_on_two_ranks(run):
    out, _, manifest = run
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
    out, _, manifest = run
    assert manifest["stages"]["grpo"]["status"] == "done"
    assert manifest["stages"]["grpo"]["init_from"] == str(out / "sft" / "merged")
    steps = _metrics(out / "grpo" / "metrics.jsonl")
    assert {1, 2} <= set(steps)
    for s in (1, 2):
        m = steps[s]
        for key in ("critic/score/mean", "actor/kl_loss", "actor/grad_norm", "actor/pg_loss"):
            assert key in m, f"step {s} lacks {key}"
        assert 0.0 <= m["critic/score/mean"] <= 1.0
        assert m["actor/grad_norm"] > 0.0  # a real update happened
        # The HF rollout's log-probs must be the actor's (3D rotary positions in both).
        assert m["training/rollout_probs_diff_max"] < 1e-3
        assert m["training/rollout_probs_diff_mean"] < 1e-5  # measured ~2.5e-7 (fp32 actor)
    assert any(k.startswith("val-core/medrl/grounding/") for k in steps[2])  # validation ran
    for s in (1, 2):
        assert (out / "grpo" / "checkpoints" / f"global_step_{s}" / "actor" / "fsdp_config.json").is_file()


@pytest.mark.slow
def test_manifest_records_versions_data_hashes_and_timings(run):
    out, _, manifest = run
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

    out, _, manifest = run
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
    assert isinstance(answer["answer"], str) and answer["truth"]


@pytest.mark.slow
def test_summary_has_the_reward_curve(run):
    from medrl.training.summary import write_summary

    out, _, manifest = run
    summary = write_summary(out, manifest)
    png = out / "reward_curve.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert "train reward" in summary.read_text()


@pytest.mark.slow
def test_grpo_resumes_from_its_last_checkpoint(run):
    from medrl.training.pipeline import run_pipeline
    from medrl.training.recipes import apply_overrides

    out, recipe, _ = run
    shutil.rmtree(out / "grpo" / "merged")  # as if the run had stopped before its merge
    more = apply_overrides(recipe, ["grpo.trainer.total_training_steps=3"])
    manifest = run_pipeline(more, out, echo=lambda line: print(line, flush=True))
    assert manifest["stages"]["sft"]["status"] == "done"  # not rerun
    first = _metrics(out / "grpo" / "metrics.0.jsonl")
    second = _metrics(out / "grpo" / "metrics.jsonl")
    assert {1, 2} <= set(first)
    assert set(second) == {3}  # continued at step 3 from global_step_2, did not start over
    # The actor has moved away from the reference by now: the KL term is live.
    assert second[3]["actor/kl_loss"] > 0
    assert (out / "grpo" / "checkpoints" / "global_step_3" / "actor").is_dir()

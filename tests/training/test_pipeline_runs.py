"""The pipeline's bookkeeping, with a stand-in trainer: reruns after a change, time limits, leftovers.

The stand-in is a real process launched exactly as a verl trainer is (own session, the run's
environment, its log); it writes the checkpoint tracker a trainer writes and counts its launches.
Merges are replaced by a folder copy; verl itself is proven by the slow tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from medrl.processes import RUN_MARKER, SHM, RunTimeout, marked_processes
from medrl.training import pipeline as P
from medrl.training.recipes import apply_overrides, load_recipe

FAKE_TRAINER = r"""
import os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
out = args["trainer.default_local_dir"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(os.path.dirname(out), "launches.txt"), "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
print("FAKE-TRAINER-STARTED", flush=True)
time.sleep(float(args.get("fake.sleep", "0")))
with open(os.path.join(out, "latest_checkpointed_iteration.txt"), "w") as fh:
    fh.write(args.get("trainer.total_training_steps", "1"))
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A two-stage recipe (sft -> grpo) whose stages run the stand-in trainer."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "val", "sft_train", "sft_val"):
        (data / f"{name}.parquet").write_text(name)
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "two", "device": "cpu", "model": str(tmp_path / "base"),
        "data": {k: str(data / f"{k}.parquet") for k in ("train", "val", "sft_train", "sft_val")},
        "stages": [
            {"name": "sft", "trainer": "sft", "overrides": {"optim.lr": 1e-4, "trainer.total_training_steps": 2}},
            {"name": "grpo", "trainer": "ppo", "init_from": "sft",
             "overrides": {"actor_rollout_ref.actor.optim.lr": 1e-6, "trainer.total_training_steps": 2}},
        ]}))

    def build(recipe, stage, out_dir, model_path):
        keys = {**stage.overrides, "trainer.default_local_dir": str(out_dir / "checkpoints"), "model": model_path}
        return [sys.executable, "-c", FAKE_TRAINER, *(f"{k}={v}" for k, v in keys.items())]

    def merge(src, target, dtype, log):
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text(json.dumps({"from": str(src)}))
        return target

    monkeypatch.setattr(P, "build_command", build)
    monkeypatch.setattr(P, "merge", merge)
    run = tmp_path / "run"

    def go(*overrides: str, timeout_s: float | None = None) -> list[str]:
        lines: list[str] = []
        P.run_pipeline(apply_overrides(load_recipe(recipe), list(overrides)), run, echo=lines.append,
                       timeout_s=timeout_s)
        return lines

    def launches(stage: str) -> int:
        f = run / stage / "launches.txt"
        return len(f.read_text().splitlines()) if f.is_file() else 0

    return go, launches, run, data


def test_an_unchanged_rerun_reuses_every_stage(fake):
    go, launches, run, _ = fake
    go()
    assert (launches("sft"), launches("grpo")) == (1, 1)
    lines = go()
    assert (launches("sft"), launches("grpo")) == (1, 1)
    assert sum("already done (same command, inputs and code)" in ln for ln in lines) == 2


def test_a_changed_rl_setting_reruns_only_that_stage_and_names_the_change(fake):
    go, launches, run, _ = fake
    go()
    lines = go("grpo.actor_rollout_ref.actor.optim.lr=1e-3")
    assert (launches("sft"), launches("grpo")) == (1, 1)  # grpo's folder was set aside: a fresh count
    assert (run / "grpo.previous" / "launches.txt").is_file()
    said = "\n".join(lines)
    assert "[grpo] changed since the run" in said and "actor_rollout_ref.actor.optim.lr: 1e-06 -> 0.001" in said
    assert "[sft] already done" in said


def test_a_changed_warm_up_reruns_it_and_every_stage_after_it(fake):
    go, launches, run, _ = fake
    go()
    lines = "\n".join(go("sft.optim.lr=1e-3"))
    assert "optim.lr: 0.0001 -> 0.001" in lines
    assert "[grpo] changed since the run" in lines and "the stage it starts from was run again" in lines
    assert (run / "sft.previous").is_dir() and (run / "grpo.previous").is_dir()


def test_changed_data_reruns_the_stages_that_read_it(fake):
    go, launches, run, data = fake
    go()
    (data / "train.parquet").write_text("other rows")
    lines = "\n".join(go())
    assert f"input {data / 'train.parquet'} changed content" in lines
    assert "[sft] already done" in lines and (run / "grpo.previous").is_dir()


def test_a_longer_run_goes_on_from_the_checkpoint_instead_of_starting_over(fake):
    go, launches, run, _ = fake
    go()
    lines = "\n".join(go("grpo.trainer.total_training_steps=4"))
    assert "only its length or bookkeeping changed" in lines and not (run / "grpo.previous").exists()
    assert launches("grpo") == 2 and (run / "grpo" / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == "4"


def test_a_stage_past_its_time_limit_fails_with_the_log_tail_and_leaves_nothing(fake):
    go, launches, run, _ = fake
    t = time.monotonic()
    with pytest.raises(RunTimeout) as err:
        go("sft.fake.sleep=30", timeout_s=3)
    assert time.monotonic() - t < 25
    assert "did not finish within 3 s" in str(err.value) and "FAKE-TRAINER-STARTED" in str(err.value)
    assert not marked_processes(run)


def _leftover(run: Path) -> psutil.Process:
    """A process of a dead earlier run: its own session, the run's marker, parent gone."""
    env = {**os.environ, RUN_MARKER: str(run.resolve())}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True)
    return psutil.Process(proc.pid)


def test_a_killed_runs_leftovers_are_ended_when_the_run_starts_again(fake):
    go, launches, run, _ = fake
    run.mkdir()
    stray = _leftover(run)
    seg = SHM / f"psm_medrltest{uuid.uuid4().hex[:8]}"
    seg.write_bytes(b"\0" * 64)
    old = time.time() - 600
    os.utime(seg, (old, old))
    try:
        lines = "\n".join(go())
        assert "[cleanup] ended 1 leftover process(es)" in lines
        assert not stray.is_running() or stray.status() == psutil.STATUS_ZOMBIE
        assert not seg.exists()
    finally:
        if stray.is_running():
            stray.kill()
        seg.unlink(missing_ok=True)


def test_a_run_folder_in_use_by_a_live_run_is_refused(fake, tmp_path):
    go, launches, run, _ = fake
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / P.OWNER).write_text(json.dumps({"pid": holder.pid, "started": psutil.Process(holder.pid).create_time()}))
        with pytest.raises(P.RecipeError, match=f"in use by another medrl run \\(pid {holder.pid}\\)"):
            go()
    finally:
        holder.kill()
        holder.wait()
    go()  # the holder is gone: the folder is free again
    assert launches("grpo") == 1


def test_inputs_are_the_values_that_name_files(tmp_path):
    from medrl.training.fingerprint import file_sha256, inputs_digest

    spec = tmp_path / "spec.yaml"
    spec.write_text("routes: {}\n")
    got = inputs_digest([str(spec), 0.5, None, "norm1", str(tmp_path / "missing.yaml")])
    assert got == {str(spec): file_sha256(spec)}
    assert inputs_digest([str(spec)], {str(spec): "recorded"}) == {str(spec): "recorded"}  # hashed once


def test_a_plain_run_checks_answer_lengths_and_a_rehearsal_does_not(fake, monkeypatch):
    go, launches, run, _ = fake
    seen: list[str] = []
    monkeypatch.setattr(P, "warn_cut_answers", lambda recipe, model, echo: seen.append(recipe.name) or [])
    go()
    assert seen == ["two"]  # before the first stage, once
    # A rehearsal passes its own preflight (its response lengths are cut on purpose and listed).
    P.run_pipeline(load_recipe(run.parent / "two.yaml"), run.parent / "run2", echo=lambda s: None,
                   preflight=lambda recipe, model: None)
    assert seen == ["two"]

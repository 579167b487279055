"""Run a recipe's stages in one run folder: (tiny model, data,) SFT -> merge -> RL -> merge.

Layout of a run folder::

    manifest.json            recipe, resolved commands, versions, data hashes, timings, status
    model/                   the tiny model (recipes with `model: tiny`)
    data/                    `medrl prepare` output (recipes with `prepare:`)
    <stage>/train.log        the verl trainer's full output
    <stage>/metrics*.jsonl   verl's file logger, one file per attempt
    <stage>/checkpoints/     verl checkpoints (resumed with trainer.resume_mode=auto)
    <stage>/merged/          the stage's HuggingFace folder (medrl.export.merge: verified, fp32 on CPU)
    final -> <last stage>/merged

A stage whose `merged/` folder is complete is skipped when the pipeline is run again; a stage
that was interrupted is relaunched and verl resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from medrl.atomic import write_json
from medrl.training.env import metrics_env, run_env
from medrl.training.recipes import Recipe, RecipeError, Stage, resolve_path, resolve_paths
from medrl.training.verl_command import build_command, format_command

DONE = ".medrl_done"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages a run depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("medrl", "verl", "torch", "transformers", "ray", "tensordict", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def latest_checkpoint(stage: Stage, stage_dir: Path) -> Path:
    """The folder verl's merger reads for a stage's last checkpoint."""
    ckpt = stage_dir / "checkpoints"
    tracker = ckpt / "latest_checkpointed_iteration.txt"
    if not tracker.is_file():
        raise RecipeError(f"stage {stage.name!r}: no checkpoint in {ckpt} (did the trainer save one?)")
    step = tracker.read_text().strip()
    folder = ckpt / f"global_step_{step}"
    return folder / "actor" if stage.trainer == "ppo" else folder


def stream_to_log(cmd: list[str], env: dict[str, str], log: Path, echo: Callable[[str], None] | None) -> int:
    """Run `cmd`, appending everything it prints to `log` and echoing verl's step lines; its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if echo and (" step:" in line or line.startswith("step:") or "Final validation" in line):
                echo(_short_step_line(line))
        return proc.wait()


KEY_METRICS = ("critic/score/mean", "actor/kl_loss", "actor/grad_norm", "train/loss", "val/loss",
               "training/rollout_probs_diff_mean", "timing_s/step")


def _short_step_line(line: str) -> str:
    """Reduce verl's long `step:N - k:v - ...` console line to the figures worth watching."""
    found = re.search(r"step:\d+ - .*", line)
    if not found:
        return line.strip()[:200]
    text = re.sub(r"np\.\w+\(([^)]*)\)", r"\1", found.group(0).strip())  # np.float64(0.5) -> 0.5
    parts = [p.strip() for p in text.split(" - ")]
    keep = [parts[0]] + [p for p in parts[1:] if p.split(":", 1)[0] in KEY_METRICS or p.startswith("val-core/")]
    return " - ".join(keep)


def merge_dtype(recipe: Recipe) -> str:
    """dtype of the merged folders: fp32 on CPU (the CPU actor trains in fp32), bf16 on GPU."""
    return "fp32" if recipe.device == "cpu" else "bf16"


def merge(local_dir: Path, target: Path, dtype: str, log: Path) -> Path:
    """Merge a verl FSDP checkpoint into a verified HuggingFace folder with `medrl.export.merge`."""
    from medrl.export.merge import MergeError, MergePlan
    from medrl.export.merge import merge as verified_merge

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        def note(line: str) -> None:
            fh.write(f"{line}\n")
            fh.flush()

        note(f"$ medrl merge {local_dir} --out {target} --dtype {dtype}")
        try:  # an earlier interrupted attempt may have left `target` without its DONE marker
            info = verified_merge(MergePlan(local_dir, target, dtype=dtype), overwrite=True, log=note)
        except MergeError as exc:
            note(f"error: {exc}")
            raise RuntimeError(f"merge of {local_dir} failed: {exc} (see {log})") from exc
        note(json.dumps(info, default=str))
    return target


def _prepare(recipe: Recipe, run_dir: Path, env: dict[str, str], echo) -> None:
    """Run the recipe's `prepare:` entries (arguments of `medrl prepare`) into <run>/data.

    An entry starting with `sample` generates data (`medrl prepare sample ... --out DIR`, its own
    folder); every other entry converts into <run>/data. Nothing runs once data/summary.json exists.
    """
    out = run_dir / "data"
    for args in recipe.raw.get("prepare") or []:
        if (out / "summary.json").is_file():
            continue
        # Paths in the recipe are relative to the repository (or the current folder): resolve them.
        cmd = [sys.executable, "-m", "medrl.cli", "prepare", *[str(resolve_path(a, run_dir)) for a in args]]
        if args[0] != "sample":
            cmd += ["--output_dir", str(out)]
        echo(f"[data] medrl prepare {' '.join(map(str, args))}")
        if stream_to_log(cmd, env, run_dir / "prepare.log", None) != 0:
            raise RuntimeError(f"data preparation failed; see {run_dir / 'prepare.log'}")


def check_reward(recipe: Recipe) -> None:
    """Load the recipe's reward file and spec here, so a broken one fails at launch, not at step 1.

    verl loads them again in its reward workers; a missing file or function, a signature verl
    cannot call or a spec that does not parse is the same error, only minutes later.
    """
    from medrl.rewards.compose import load_spec
    from medrl.rewards.user_reward import load_reward_file

    path, name = recipe.reward.get("path"), recipe.reward.get("name", "compute_score")
    spec = recipe.reward_spec
    try:
        if path:
            load_reward_file(path, name)
        if spec:
            load_spec(spec)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"reward of {recipe.path}: {exc}") from exc


def _model(recipe: Recipe, run_dir: Path, echo) -> str:
    if recipe.model != "tiny":
        return recipe.model
    folder = run_dir / "model"
    if not (folder / "config.json").is_file():
        from medrl.training.tiny_model import build_tiny_model

        echo(f"[model] building the tiny Qwen2.5-VL in {folder}")
        build_tiny_model(folder)
    return str(folder)


def run_pipeline(
    recipe: Recipe,
    run_dir: str | os.PathLike,
    stages: list[str] | None = None,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    preflight: Callable[[Recipe, str], None] | None = None,
) -> dict[str, Any]:
    """Run (or, with dry_run, print) the recipe's stages in `run_dir`; returns the manifest.

    `preflight(recipe, model)` runs once the model and data exist, before the first stage.
    """
    run_dir = Path(run_dir).resolve()
    recipe = resolve_paths(recipe, run_dir)
    env = run_env(recipe.device)
    selected = [s for s in recipe.stages if stages is None or s.name in stages]
    manifest_path = run_dir / "manifest.json"
    manifest: dict[str, Any] = {}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
    manifest.update(
        recipe={"name": recipe.name, "path": str(recipe.path), "content": recipe.raw},
        device=recipe.device,
        versions=versions(),
    )
    manifest.setdefault("stages", {})
    manifest.setdefault("timings_s", {})

    if dry_run:
        model = str(run_dir / "model") if recipe.model == "tiny" else recipe.model
        for st in selected:
            init = run_dir / st.init_from / "merged" if st.init_from else None
            cmd = build_command(recipe, st, run_dir / st.name, model_path=str(init) if init else model)
            echo(f"# stage {st.name} ({st.trainer})")
            echo(format_command(cmd))
        return manifest

    check_reward(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = _model(recipe, run_dir, echo)
    _prepare(recipe, run_dir, env, echo)
    manifest["timings_s"]["setup"] = round(time.time() - t0, 1)
    manifest["data"] = {
        k: {"path": v, "sha256": file_sha256(Path(v))} for k, v in recipe.data.items() if v and Path(v).is_file()
    }
    write_json(manifest_path, manifest)
    if preflight is not None:
        preflight(recipe, model)

    last_merged = None
    for st in recipe.stages:
        stage_dir = run_dir / st.name
        merged = stage_dir / "merged"
        if st not in selected or (merged / DONE).is_file():
            if (merged / DONE).is_file():
                echo(f"[{st.name}] already done: {merged}")
                last_merged = merged
            continue
        start = (run_dir / st.init_from / "merged") if st.init_from else None
        if start is not None and not (start / DONE).is_file():
            raise RecipeError(f"stage {st.name!r} starts from {st.init_from!r}, which has not finished")
        cmd = build_command(recipe, st, stage_dir, model_path=str(start) if start else model)
        stage_env = dict(env)
        metrics = stage_dir / "metrics.jsonl"
        if metrics.is_file():  # verl's file logger truncates; keep the earlier attempt's figures
            n = len(list(stage_dir.glob("metrics.*.jsonl")))
            metrics.rename(stage_dir / f"metrics.{n}.jsonl")
        stage_env.update(metrics_env(stage_dir))
        manifest["stages"][st.name] = {"trainer": st.trainer, "command": cmd, "status": "running",
                                       "init_from": str(start) if start else model}
        write_json(manifest_path, manifest)
        echo(f"[{st.name}] {st.trainer} trainer starting (log: {stage_dir / 'train.log'})")
        t = time.time()
        rc = stream_to_log(cmd, stage_env, stage_dir / "train.log", lambda line, n=st.name: echo(f"[{n}] {line}"))
        manifest["timings_s"][st.name] = round(time.time() - t, 1)
        if rc != 0:
            manifest["stages"][st.name]["status"] = f"failed (exit {rc})"
            write_json(manifest_path, manifest)
            raise RuntimeError(f"stage {st.name!r} failed with exit code {rc}; see {stage_dir / 'train.log'}")
        t = time.time()
        echo(f"[{st.name}] merging {latest_checkpoint(st, stage_dir)} -> {merged}")
        merge(latest_checkpoint(st, stage_dir), merged, merge_dtype(recipe), stage_dir / "merge.log")
        (merged / DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
        manifest["timings_s"][f"{st.name}_merge"] = round(time.time() - t, 1)
        manifest["stages"][st.name].update(status="done", merged=str(merged))
        write_json(manifest_path, manifest)
        last_merged = merged

    if last_merged is not None:
        final = run_dir / "final"
        if final.is_symlink() or final.exists():
            final.unlink()
        final.symlink_to(last_merged.relative_to(run_dir))
        manifest["final_model"] = str(final)
    manifest["timings_s"]["total"] = round(time.time() - t0, 1)
    write_json(manifest_path, manifest)
    return manifest

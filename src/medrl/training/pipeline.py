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

A stage whose `merged/` folder is complete is skipped when the pipeline is run again, if it was
made from the same command, inputs and code (`medrl.training.fingerprint`); when any of that
changed, the stage and the stages after it run again and the old stage folder is kept as
`<stage>.previous`. A stage that was interrupted is relaunched and verl resumes from its last
checkpoint; the dead attempt's leftover processes and shared memory are cleaned up first.
Every launched command has a time limit (`timeout_s`, or `MEDRL_STAGE_TIMEOUT_S`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from medrl.atomic import write_json
from medrl.processes import RUN_MARKER, clean_leftovers, run_logged
from medrl.training.answer_length import warn_cut_answers
from medrl.training.algorithms import refuse_errors, stage_report
from medrl.training.env import metrics_env, run_env
from medrl.training.fingerprint import (digest, file_sha256, inputs_digest, length_changed, source_digest,
                                        stage_fingerprint, what_changed)
from medrl.training.recipes import Recipe, RecipeError, Stage, resolve_path, resolve_paths
from medrl.training.verl_command import build_command, format_command

DONE = ".medrl_done"
OWNER = ".medrl_owner.json"
TIMEOUT_ENV = "MEDRL_STAGE_TIMEOUT_S"


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


def default_timeout() -> float | None:
    """The time limit of one launched command: `MEDRL_STAGE_TIMEOUT_S` seconds, or none."""
    value = os.environ.get(TIMEOUT_ENV)
    return float(value) if value else None


def stream_to_log(cmd: list[str], env: dict[str, str], log: Path, echo: Callable[[str], None] | None,
                  timeout_s: float | None = None) -> int:
    """Run `cmd` in its own process group with a time limit, writing everything to `log` and echoing progress."""
    def on_line(line: str) -> None:
        if echo and (" step:" in line or line.startswith("step:") or "Final validation" in line):
            echo(_short_step_line(line))

    return run_logged(cmd, env, log, on_line, timeout_s if timeout_s is not None else default_timeout())


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


def prepare_data(recipe: Recipe, run_dir: Path, env: dict[str, str], echo) -> None:
    """Run the recipe's `prepare:` entries (arguments of `medrl prepare`) into <run>/data.

    An entry starting with `sample` generates data (`medrl prepare sample ... --out DIR`, its own
    folder); every other entry converts into <run>/data. Nothing runs once data/summary.json exists
    and `prepare.json` records the same entries; changed entries remake the folder (the old one is
    kept as data.previous).
    """
    out = run_dir / "data"
    entries = [[str(a) for a in args] for args in recipe.raw.get("prepare") or []]
    record = run_dir / "prepare.json"
    if entries and (out / "summary.json").is_file():
        made_with = json.loads(record.read_text()) if record.is_file() else None
        if made_with == entries:
            return
        echo(f"[data] the recipe's prepare entries changed since {out} was made; preparing it again "
             f"(the old folder is kept as data.previous)")
        _set_aside(out)
    for args in entries:
        if (out / "summary.json").is_file():
            continue
        # Paths in the recipe are relative to the repository (or the current folder): resolve them.
        cmd = [sys.executable, "-m", "medrl.cli", "prepare", *[str(resolve_path(a, run_dir)) for a in args]]
        if args[0] != "sample":
            cmd += ["--output_dir", str(out)]
        echo(f"[data] medrl prepare {' '.join(map(str, args))}")
        if stream_to_log(cmd, env, run_dir / "prepare.log", None) != 0:
            raise RuntimeError(f"data preparation failed; see {run_dir / 'prepare.log'}")
    if entries:
        write_json(record, entries)


def _set_aside(folder: Path) -> None:
    """Keep an outdated folder as `<name>.previous` (replacing an older one) so nothing is lost."""
    if not folder.exists():
        return
    previous = folder.with_name(folder.name + ".previous")
    if previous.exists():
        shutil.rmtree(previous)
    folder.rename(previous)


def _claim(run_dir: Path, echo: Callable[[str], None]) -> Path:
    """Make this process the run folder's owner, after ending what a dead earlier run left behind."""
    owner = run_dir / OWNER
    if owner.is_file():
        try:
            rec = json.loads(owner.read_text())
            alive = psutil.pid_exists(rec["pid"]) and psutil.Process(rec["pid"]).create_time() == rec["started"]
        except (ValueError, KeyError, psutil.Error):
            alive = False
        if alive and rec["pid"] != os.getpid():
            raise RecipeError(f"{run_dir} is in use by another medrl run (pid {rec['pid']}); wait for it or stop it")
    clean_leftovers(run_dir, echo)
    write_json(owner, {"pid": os.getpid(), "started": psutil.Process().create_time()})
    return owner


def code_version() -> dict[str, str]:
    """Package versions and medrl's source digest: a change means the stage's code changed."""
    return {**versions(), "medrl_source": source_digest()}


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


def model_for(recipe: Recipe, run_dir: Path, echo: Callable[[str], None]) -> str:
    """The recipe's model path; for `model: tiny`, the tiny Qwen2.5-VL built once in <run>/model."""
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
    timeout_s: float | None = None,
    check_algorithms: bool = True,
) -> dict[str, Any]:
    """Run (or, with dry_run, print) the recipe's stages in `run_dir`; returns the manifest.

    Each PPO stage's algorithm keys are printed and checked first (`medrl.training.algorithms`:
    an error stops here); `check_algorithms=False` skips that for a caller that checked already.
    `preflight(recipe, model)` runs once the model and data exist, before the first stage; without
    one, `medrl.training.answer_length.warn_cut_answers` checks the answers fit the response length.
    `timeout_s` limits each launched command (default: `MEDRL_STAGE_TIMEOUT_S`, else none).
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
    reports = {st.name: stage_report(recipe, st, run_dir) for st in selected if st.trainer == "ppo"} \
        if check_algorithms else {}
    refuse_errors(recipe, reports)

    if dry_run:
        model = str(run_dir / "model") if recipe.model == "tiny" else recipe.model
        for st in selected:
            init = run_dir / st.init_from / "merged" if st.init_from else None
            cmd = build_command(recipe, st, run_dir / st.name, model_path=str(init) if init else model)
            echo(f"# stage {st.name} ({st.trainer})")
            for line in reports.get(st.name, ([], []))[0]:
                echo(line)
            echo(format_command(cmd))
        return manifest

    for name, (lines, _) in reports.items():
        for line in lines:
            echo(f"[{name}] {line.lstrip('# ')}")
    check_reward(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    owner = _claim(run_dir, echo)
    try:
        return _run_stages(recipe, run_dir, selected, manifest, env, echo, preflight, timeout_s)
    finally:
        owner.unlink(missing_ok=True)


def _run_stages(recipe: Recipe, run_dir: Path, selected: list[Stage], manifest: dict[str, Any],
                env: dict[str, str], echo: Callable[[str], None],
                preflight: Callable[[Recipe, str], None] | None, timeout_s: float | None) -> dict[str, Any]:
    manifest_path = run_dir / "manifest.json"
    env = {**env, RUN_MARKER: str(run_dir)}  # every process of the run carries it (medrl.processes)
    t0 = time.time()
    model = model_for(recipe, run_dir, echo)
    prepare_data(recipe, run_dir, env, echo)
    manifest["timings_s"]["setup"] = round(time.time() - t0, 1)
    manifest["data"] = {
        k: {"path": v, "sha256": file_sha256(Path(v))} for k, v in recipe.data.items() if v and Path(v).is_file()
    }
    write_json(manifest_path, manifest)
    if preflight is not None:
        preflight(recipe, model)
    else:  # a plain run: warn when the response length cuts the reference answers (a rehearsal cuts it on purpose)
        warn_cut_answers(recipe, model, echo)

    last_merged, upstream, code = None, {}, code_version()
    # Each input file is hashed once: the data files' hashes are the manifest's.
    hashes = inputs_digest([*(v for v in recipe.data.values() if isinstance(v, str)), recipe.reward.get("path"),
                            *(recipe.reward.get("kwargs") or {}).values()],
                           {d["path"]: d["sha256"] for d in manifest["data"].values()})
    for st in recipe.stages:
        stage_dir = run_dir / st.name
        merged = stage_dir / "merged"
        start = (run_dir / st.init_from / "merged") if st.init_from else None
        cmd = build_command(recipe, st, stage_dir, model_path=str(start) if start else model)
        # SFT reads the chat-form files, RL the prompt files; both read the reward's files.
        skip = {v for k, v in recipe.data.items() if isinstance(v, str) and k.startswith("sft_") != (st.trainer == "sft")}
        fp = stage_fingerprint(cmd, {p: h for p, h in hashes.items() if p not in skip}, code,
                               upstream.get(st.init_from))
        recorded = manifest["stages"].get(st.name, {}).get("fingerprint")
        changed, longer = what_changed(recorded, fp), length_changed(recorded, fp)
        if st in selected and ((merged / DONE).is_file() or (stage_dir / "checkpoints").is_dir()):
            if changed:
                echo(f"[{st.name}] changed since the run in {stage_dir}: " + "; ".join(changed[:6])
                     + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""))
                echo(f"[{st.name}] running it again; the old folder is kept as {stage_dir.name}.previous")
                _set_aside(stage_dir)
            elif (merged / DONE).is_file() and longer:
                echo(f"[{st.name}] only its length or bookkeeping changed ({'; '.join(longer)}): "
                     "going on from its last checkpoint")
                (merged / DONE).unlink()
        elif (merged / DONE).is_file() and changed:
            raise RecipeError(f"stage {st.name!r} in {stage_dir} was made from other settings or inputs "
                              f"({'; '.join(changed[:3])}); run it again before the stages after it")
        # What the later stages start from: the recorded result, unless this stage runs now.
        upstream[st.name] = digest(recorded if st not in selected and recorded else fp)
        if st not in selected or (merged / DONE).is_file():
            if (merged / DONE).is_file():
                echo(f"[{st.name}] already done (same command, inputs and code): {merged}")
                last_merged = merged
            continue
        if start is not None and not (start / DONE).is_file():
            raise RecipeError(f"stage {st.name!r} starts from {st.init_from!r}, which has not finished")
        stage_env = dict(env)
        metrics = stage_dir / "metrics.jsonl"
        if metrics.is_file():  # verl's file logger truncates; keep the earlier attempt's figures
            n = len(list(stage_dir.glob("metrics.*.jsonl")))
            metrics.rename(stage_dir / f"metrics.{n}.jsonl")
        stage_env.update(metrics_env(stage_dir))
        manifest["stages"][st.name] = {"trainer": st.trainer, "command": cmd, "status": "running",
                                       "init_from": str(start) if start else model, "fingerprint": fp}
        write_json(manifest_path, manifest)
        echo(f"[{st.name}] {st.trainer} trainer starting (log: {stage_dir / 'train.log'})")
        t = time.time()
        rc = stream_to_log(cmd, stage_env, stage_dir / "train.log", lambda line, n=st.name: echo(f"[{n}] {line}"),
                           timeout_s)
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

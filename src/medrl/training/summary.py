"""A short run summary: what the validation did (before SFT, after SFT, across RL), one validation
image with its true and predicted boxes before and after RL, the reward curve and key figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medrl import jsonl
from medrl.atomic import atomic_open
from medrl.evaluation.metrics import area_ratio_note
from medrl.evaluation.plots import pyplot, save_figure
from medrl.training import learning, rl_change
from medrl.training.recipes import resolve_path, reward_spec


def _series(steps: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    xs = [s for s in sorted(steps) if isinstance(steps[s].get(key), (int, float))]
    return xs, [float(steps[s][key]) for s in xs]


def plot_rewards(steps: dict[int, dict], out: Path) -> Path:
    """Plot the training reward (mean +- min/max) and validation reward against the step."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    xs, mean = _series(steps, "critic/score/mean")
    if xs:
        _, lo = _series(steps, "critic/score/min")
        _, hi = _series(steps, "critic/score/max")
        ax.plot(xs, mean, marker="o", label="train reward (mean)")
        if len(lo) == len(xs) == len(hi):
            ax.fill_between(xs, lo, hi, alpha=0.2, label="train min-max")
    val_keys = sorted({k for d in steps.values() for k in d if k.startswith("val-core/") and "reward" in k})
    for key in val_keys:
        vx, vy = _series(steps, key)
        ax.plot(vx, vy, marker="s", linestyle="--", label="val " + key.split("/")[1] + "/" + key.split("/")[2])
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_title("reward curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def sample_answer(model_dir: Path, val_parquet: Path, max_new_tokens: int = 160) -> dict[str, str]:
    """Load the final HF folder with transformers and answer the first validation prompt (greedy)."""
    # The evaluation path's own row reader and generator: same images, chat template and
    # mm_token_type_ids as `medrl eval`, so the summary shows what an evaluation would see.
    from medrl.evaluation.generate import HFGenerator
    from medrl.evaluation.rows import read_rows

    row = read_rows(val_parquet, limit=1)[0]
    answer = HFGenerator(str(model_dir), dtype="fp32").generate([row], max_new_tokens)[0]
    question = " ".join(p.get("text", "") for m in row.messages if m.get("role") == "user"
                        for p in m.get("content", []) if p.get("type") == "text")
    return {"question": question, "truth": str(row.ground_truth), "answer": answer}


def before_after_figure(panels: list[tuple[Any, list, list, list, str]], path: Path, title: str) -> Path:
    """Images side by side, each with the true boxes (green) and the predicted boxes before (orange) and after (red) RL.

    `panels`: (image, true boxes, boxes before, boxes after, caption) per image.
    """
    plt = pyplot()
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.9), dpi=110, squeeze=False)
    for ax, (image, truth, before, after, caption) in zip(axes[0], panels):
        w, h = image.size
        ax.imshow(image, cmap="gray")
        for boxes, color, style, label in ((truth, "lime", "-", "truth"), (before, "orange", "--", "before RL"),
                                           (after, "red", "-", "after RL")):
            for i, b in enumerate(boxes):
                ax.add_patch(Rectangle((b[0] * w, b[1] * h), (b[2] - b[0]) * w, (b[3] - b[1]) * h, fill=False,
                                       edgecolor=color, linestyle=style, linewidth=2, label=label if i == 0 else None))
        ax.set_axis_off()
        ax.set_title(caption, fontsize=8)
    handles = {lab: hd for ax in axes[0] for hd, lab in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", fontsize=7, ncol=3)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return save_figure(fig, path)


def _scores(eval_dir: Path) -> list[dict]:
    return jsonl.read(eval_dir / "scores.jsonl")


def _response_length(manifest: dict[str, Any], rl: str, default: int = 64) -> int:
    """The RL stage's data.max_response_length: what verl's validation lets a model answer."""
    for stage in manifest.get("recipe", {}).get("content", {}).get("stages") or []:
        if stage.get("name") == rl:
            return int((stage.get("overrides") or {}).get("data.max_response_length", default))
    return default


def learning_section(run_dir: Path, manifest: dict[str, Any], rl: str, sft: str | None) -> list[str]:
    """Validation mIoU before SFT, after SFT and across RL, a plain verdict, and the before/after image."""
    val = manifest.get("data", {}).get("val", {}).get("path")
    curve = learning.grpo_curve(run_dir / rl)
    if not val or not curve:
        return ["(no validation dumps: set trainer.validation_data_dir to see the learning curve)", ""]
    spec = reward_spec(manifest.get("recipe", {}).get("content", {}).get("reward"))
    spec = str(resolve_path(spec, run_dir)) if spec else None
    evals = {}
    models = [("before SFT", run_dir / "model"), ("after RL", run_dir / rl / "merged")]
    if sft:
        models.insert(1, ("before RL", run_dir / sft / "merged"))
    for label, folder in models:
        if (folder / "config.json").is_file():
            out = run_dir / "eval" / label.replace(" ", "_")
            evals[label] = (learning.evaluate(folder, val, out, spec, max_new_tokens=_response_length(manifest, rl)),
                            out)
    lines = ["## Learning: validation grounding (greedy answers, IoU with the true box)", "",
             "| model | step | mIoU | acc@0.5 | reward | rows |", "|---|---|---|---|---|---|"]
    if "before SFT" in evals:
        p = evals["before SFT"][0]
        lines.append(f"| random init (before SFT), medrl eval | - | {p.miou:.3f} | {p.acc50:.3f} | {p.reward:.3f} | {p.n} |")
    for p in curve:
        lines.append(f"| {rl} step {p.step}{' (= after SFT)' if p.step == 0 else ''}, verl validation | {p.step} "
                     f"| {p.miou:.3f} | {p.acc50:.3f} | {p.reward:.3f} | {p.n} |")
    if "after RL" in evals:
        p = evals["after RL"][0]
        lines.append(f"| final model, medrl eval | {curve[-1].step} | {p.miou:.3f} | {p.acc50:.3f} | {p.reward:.3f} | {p.n} |")
    lines += [""] + [f"- {label}: {area_ratio_note(learning.box_area_ratio(out))}" for label, (_, out) in evals.items()]
    plot = learning.plot_curves({rl: [curve]}, run_dir / "learning_curve.png", f"{rl}: validation mIoU")
    first, last = curve[0], curve[-1]
    mean, se, n = learning.paired_change(learning.validation_rows(run_dir / rl, first.step),
                                         learning.validation_rows(run_dir / rl, last.step))
    lines += ["", f"![validation mIoU across {rl}]({plot.name})", "",
              "**What the curve does:** " + learning.describe_change(
                  f"after SFT (step {first.step})", f"after {last.step} {rl} steps", mean, se, n, first.miou,
                  last.miou), ""]
    if "before RL" in evals and "after RL" in evals:
        lines += rl_section(val, _scores(evals["before RL"][1]), _scores(evals["after RL"][1]), run_dir)
    return lines


def rl_section(val: str, before: list[dict], after: list[dict], run_dir: Path) -> list[str]:
    """The RL stage's paired change in mIoU, acc@0.5 and box size, and rows picked by a stated rule, drawn."""
    from medrl.evaluation.rows import original_image, read_rows

    changes = rl_change.compare(before, after)
    lines = ["## What RL changed (medrl eval of the model before and after RL, same validation rows)", "",
             *rl_change.table(changes), ""] + [f"- {rl_change.sentence(c)}" for c in changes] + [""]
    picks = rl_change.pick_rows(before, after)
    if not picks:
        return lines
    rows = read_rows(val)
    by_key = {r["key"]: r for r in after}
    before_by_key = {r["key"]: r for r in before}
    panels, notes = [], []
    for label, key in picks:
        rec, old = by_key[key], before_by_key[key]
        image = original_image(rows[int(rec["index"])].images[0])
        if image is None:
            continue
        panels.append((image, rec.get("true_boxes", []), old.get("pred_boxes", []), rec.get("pred_boxes", []),
                       f"{label}, row {rec['index']}"))
        notes.append(f"- {label}, row {rec['index']}: truth `{rec.get('ground_truth', '')}`; before RL "
                     f"(score {old['score']:.2f}) `{old.get('answer', '')[:120]}`; after RL (score {rec['score']:.2f}) "
                     f"`{rec.get('answer', '')[:120]}`")
    if panels:
        fig = before_after_figure(panels, run_dir / "before_after.png", rl_change.PICK_RULE)
        lines += ["## Validation images before and after RL", "", f"Rule: {rl_change.PICK_RULE}.", "",
                  f"![before and after RL]({fig.name})", "", *notes, ""]
    return lines


def write_summary(run_dir: Path, manifest: dict[str, Any], rl_stage: str | None = None) -> Path:
    """Write summary.md (+ learning_curve.png, before_after.png, reward_curve.png) into the run folder."""
    run_dir = Path(run_dir)
    stages = manifest.get("stages", {})
    rl = rl_stage or next((n for n, s in reversed(list(stages.items())) if s.get("trainer") == "ppo"), None)
    sft = next((n for n, s in stages.items() if s.get("trainer") == "sft"), None)
    lines = [f"# medrl run: {manifest.get('recipe', {}).get('name', '?')}", ""]
    lines.append("| stage | trainer | status | seconds |")
    lines.append("|---|---|---|---|")
    for name, st in stages.items():
        lines.append(f"| {name} | {st.get('trainer')} | {st.get('status')} | {manifest['timings_s'].get(name, '')} |")
    lines.append("")
    if rl and (run_dir / rl).is_dir():
        try:
            lines += learning_section(run_dir, manifest, rl, sft)
        except (OSError, ValueError, KeyError) as exc:  # a summary must not hide the run's result
            lines += [f"(could not evaluate the learning curve: {type(exc).__name__}: {exc})", ""]
        steps = learning.read_metrics(run_dir / rl)
        if steps:
            plot_rewards(steps, run_dir / "reward_curve.png")
            lines += ["## Training", "", "![reward curve](reward_curve.png)", ""]
            last = steps[max(steps)]
            first_x, first_y = _series(steps, "critic/score/mean")
            if first_y:
                lines.append(f"- train reward: step {first_x[0]} {first_y[0]:.3f} -> step {first_x[-1]} {first_y[-1]:.3f}")
            for key in ("actor/kl_loss", "actor/grad_norm", "actor/entropy", "training/rollout_probs_diff_max",
                        "timing_s/step"):
                if key in last:
                    lines.append(f"- {key} (last step): {float(last[key]):.3g}")
    if sft and (run_dir / sft).is_dir():
        steps = learning.read_metrics(run_dir / sft)
        xs, loss = _series(steps, "train/loss")
        if loss:
            lines.append(f"- SFT loss: step {xs[0]} {loss[0]:.3f} -> step {xs[-1]} {loss[-1]:.3f}")
    final = manifest.get("final_model")
    lines += ["", f"Final model: `{final}`", f"Total time: {manifest['timings_s'].get('total', '?')} s", ""]
    out = run_dir / "summary.md"
    with atomic_open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    return out

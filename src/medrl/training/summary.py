"""A short run summary: the reward curve as an image, key figures, and one answer of the final model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medrl.atomic import atomic_open, atomic_path


def read_metrics(stage_dir: Path) -> dict[int, dict[str, Any]]:
    """Merge a stage's verl file-logger records (all attempts) into {step: metrics}."""
    steps: dict[int, dict[str, Any]] = {}
    files = sorted(stage_dir.glob("metrics.*.jsonl")) + sorted(stage_dir.glob("metrics.jsonl"))
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON line: {exc}") from exc
            steps.setdefault(int(rec["step"]), {}).update(rec.get("data", {}))
    return steps


def _series(steps: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    xs = [s for s in sorted(steps) if isinstance(steps[s].get(key), (int, float))]
    return xs, [float(steps[s][key]) for s in xs]


def plot_rewards(steps: dict[int, dict], out: Path) -> Path:
    """Plot the training reward (mean +- min/max) and validation reward against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def sample_answer(model_dir: Path, val_parquet: Path, max_new_tokens: int = 160) -> dict[str, str]:
    """Load the final HF folder with transformers and answer the first validation prompt (greedy)."""
    # The evaluation path's own row reader and generator: same images, chat template and
    # mm_token_type_ids as `medrl eval`, so the summary shows what an evaluation would see.
    from medrl.export.generate import HFGenerator
    from medrl.export.rows import read_rows

    row = read_rows(val_parquet, limit=1)[0]
    answer = HFGenerator(str(model_dir), dtype="fp32").generate([row], max_new_tokens)[0]
    question = " ".join(p.get("text", "") for m in row.messages if m.get("role") == "user"
                        for p in m.get("content", []) if p.get("type") == "text")
    return {"question": question, "truth": str(row.ground_truth), "answer": answer}


def write_summary(run_dir: Path, manifest: dict[str, Any], rl_stage: str | None = None) -> Path:
    """Write summary.md (+ reward_curve.png) into the run folder and return its path."""
    run_dir = Path(run_dir)
    stages = manifest.get("stages", {})
    rl = rl_stage or next((n for n, s in reversed(list(stages.items())) if s.get("trainer") == "ppo"), None)
    lines = [f"# medrl run: {manifest.get('recipe', {}).get('name', '?')}", ""]
    lines.append("| stage | trainer | status | seconds |")
    lines.append("|---|---|---|---|")
    for name, st in stages.items():
        lines.append(f"| {name} | {st.get('trainer')} | {st.get('status')} | {manifest['timings_s'].get(name, '')} |")
    lines.append("")
    if rl and (run_dir / rl).is_dir():
        steps = read_metrics(run_dir / rl)
        if steps:
            plot_rewards(steps, run_dir / "reward_curve.png")
            lines += ["![reward curve](reward_curve.png)", ""]
            last = steps[max(steps)]
            first_x, first_y = _series(steps, "critic/score/mean")
            if first_y:
                lines.append(f"- train reward: step {first_x[0]} {first_y[0]:.3f} -> step {first_x[-1]} {first_y[-1]:.3f}")
            for key in ("actor/kl_loss", "actor/grad_norm", "training/rollout_probs_diff_max"):
                if key in last:
                    lines.append(f"- {key} (last step): {float(last[key]):.3g}")
            for key in sorted({k for d in steps.values() for k in d if k.startswith("val-core/")}):
                vx, vy = _series(steps, key)
                if vy:
                    lines.append(f"- {key}: " + ", ".join(f"step {x}: {y:.3f}" for x, y in zip(vx, vy)))
    sft = next((n for n, s in stages.items() if s.get("trainer") == "sft"), None)
    if sft and (run_dir / sft).is_dir():
        steps = read_metrics(run_dir / sft)
        xs, loss = _series(steps, "train/loss")
        if loss:
            lines.append(f"- SFT loss: step {xs[0]} {loss[0]:.3f} -> step {xs[-1]} {loss[-1]:.3f}")
    final = manifest.get("final_model")
    val = manifest.get("data", {}).get("val", {}).get("path")
    if final and val:
        try:
            ans = sample_answer(Path(final), Path(val))
            lines += ["", "## The final model, one validation image", "", f"- truth: `{ans['truth']}`",
                      f"- answer: `{ans['answer'][:300]}`"]
        except (OSError, ValueError, KeyError) as exc:  # a summary must not hide the run's result
            lines += ["", f"(could not load the final model for a sample answer: {exc})"]
    lines += ["", f"Final model: `{final}`", f"Total time: {manifest['timings_s'].get('total', '?')} s", ""]
    out = run_dir / "summary.md"
    with atomic_open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    return out

"""The bench_learning table: per arm, validation figures over seeds, paired changes and issue 23's targets.

Reads what `benchmarks/bench_learning.py` leaves: `results` ({seed: {arm: {"final": ..., "curve": ...}}}, the
start's figures under "start") and each final model's `medrl eval` folder under `out/seed<N>/`.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from medrl import jsonl
from medrl.training import learning, rl_change


def spread(values: list[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(values), statistics.median(values), max(values)


def final_eval_dir(out: Path, seed: int, arm: str, res: dict) -> Path:
    """The `medrl eval` folder of an arm's final model (the warm-up's for "start")."""
    seed_dir = out / f"seed{seed}"
    if arm == "start":
        return seed_dir / "warmup" / "eval"
    if arm == "sft":
        return seed_dir / "sft" / f"eval_{res['sft']['final']['step']}"
    return seed_dir / arm / "eval"


def table(results: dict[int, dict], arms: list[str], out: Path) -> str:
    """Per arm: start and final validation figures, the gains, the median box/true area and (GRPO arms) the
    median seconds per training step; min / median / max over seeds."""
    seeds = sorted(results)
    lines = [f"{len(seeds)} seed(s): {seeds}; figures are min / median / max over seeds (final model, medrl eval); "
             f"box/true area: each final model's median over rows with a matched box",
             f"{'arm':<16} {'train min':>9} {'mIoU':>20} {'gain mIoU':>23} {'acc@0.5':>20} {'gain acc@0.5':>23} "
             f"{'box/true area':>17} {'s/step':>17}"]

    def fmt(vals, sign=False, digits=3):
        vals = [v for v in vals if not math.isnan(v)]
        if not vals:
            return "-"
        lo, med, hi = spread(vals)
        f = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
        return f"{f.format(lo)}/{f.format(med)}/{f.format(hi)}"

    def area(arm):  # each final model's median box-area ratio, spread over seeds
        return fmt([learning.box_area_ratio(final_eval_dir(out, s, arm, results[s])) for s in seeds
                    if arm == "start" or arm in results[s]], digits=2)

    start = [results[s]["start"] for s in seeds]
    lines.append(f"{'start':<16} {'0':>9} {fmt([p['miou'] for p in start]):>20} {'':>23} "
                 f"{fmt([p['acc50'] for p in start]):>20} {'':>23} {area('start'):>17}")
    for arm in arms:
        have = [s for s in seeds if arm in results[s]]
        if not have:
            continue
        fin = [results[s][arm]["final"] for s in have]
        gain = {k: [results[s][arm]["final"][k] - results[s]["start"][k] for s in have] for k in ("miou", "acc50")}
        mins = fmt([p["train_s"] / 60 for p in fin], digits=1).split("/")[1]
        step_s = fmt([results[s][arm].get("s_step", math.nan) for s in have], digits=2) if arm != "sft" else ""
        lines.append(f"{arm:<16} {mins:>9} {fmt([p['miou'] for p in fin]):>20} {fmt(gain['miou'], True):>23} "
                     f"{fmt([p['acc50'] for p in fin]):>20} {fmt(gain['acc50'], True):>23} {area(arm):>17} "
                     f"{step_s:>17}")
    for arm in arms:
        if arm in ("shuffled", "sft") or not all(arm in results[s] and "shuffled" in results[s] for s in seeds):
            continue
        margin = [results[s][arm]["final"]["miou"] - results[s]["shuffled"]["final"]["miou"] for s in seeds]
        lines.append(f"{arm} mIoU minus shuffled mIoU, per seed: {', '.join(f'{m:+.3f}' for m in margin)}")
    return "\n".join(lines + paired_lines(results, arms, out) + target_lines(results, arms, out)
                     + beyond_sft_lines(results, out))


def paired(change: rl_change.Change) -> str:
    """A paired change as the tables print it: mean (paired standard error, verdict)."""
    if math.isnan(change.se):
        return "-"
    return f"{change.diff:+.3f} ({change.se:.3f}, {rl_change.verdict(change.diff, change.se)})"


def paired_change(out: Path, seed: int, res: dict, before: str, after: str) -> list[rl_change.Change]:
    """mIoU and acc@0.5 of arm `after`'s final model against arm `before`'s, on the same validation rows."""
    rows = [jsonl.read(final_eval_dir(out, seed, arm, res) / "scores.jsonl") for arm in (before, after)]
    return rl_change.compare(*rows)[:2]


def paired_lines(results: dict[int, dict], arms: list[str], out: Path) -> list[str]:
    """Per arm, each seed's final model against its start on the same validation rows: the change, its paired
    standard error and the verdict (a change within 2 standard errors is noise), as the run summary gives it."""
    seeds = sorted(results)
    lines = ["paired change of each final model against its start over the same validation rows "
             "(mean, paired standard error, verdict), per seed:"]
    for arm in arms:
        have = [s for s in seeds if arm in results[s]]
        if not have:
            continue
        per_metric: dict[str, list[str]] = {}
        for s in have:
            for c in paired_change(out, s, results[s], "start", arm):
                per_metric.setdefault(c.metric, []).append(paired(c))
        lines.append(f"  {arm:<14} " + "; ".join(f"{m} {', '.join(v)}" for m, v in per_metric.items()))
    return lines


# Issue 23's targets for a grounding spec against its SFT start, each the minimum (or range) over seeds.
GAIN_TARGET = 0.05       # validation acc@0.5 and mIoU, each up by at least this
AREA_BAND = (0.8, 1.25)  # median box/true area of the final model
SHUFFLED_MARGIN = 0.04   # mIoU above the shuffled arm, in every seed


def verdict(value: float, target: float) -> str:
    """"met", or "missed by" how much a worst-seed figure falls short of its target."""
    return "met" if value >= target - 1e-12 else f"missed by {target - value:.3f}"


def target_lines(results: dict[int, dict], arms: list[str], out: Path) -> list[str]:
    """One line per GRPO arm run in every seed: each of issue 23's targets, met or missed and by how much."""
    seeds = sorted(results)

    lines = []
    for arm in arms:
        if arm in ("shuffled", "sft") or not all(arm in results[s] for s in seeds):
            continue
        gain = {k: min(results[s][arm]["final"][k] - results[s]["start"][k] for s in seeds) for k in ("acc50", "miou")}
        ratios = [learning.box_area_ratio(final_eval_dir(out, s, arm, results[s])) for s in seeds]
        lo, hi = AREA_BAND
        if any(math.isnan(r) for r in ratios):
            area = "no matched box in some seed: missed"
        else:
            worst = max(max(r - hi, lo - r, 0.0) for r in ratios)
            area = f"{min(ratios):.2f}..{max(ratios):.2f} ({'met' if worst == 0 else f'missed by {worst:.2f}'})"
        parts = [f"acc@0.5 gain {gain['acc50']:+.3f} ({verdict(gain['acc50'], GAIN_TARGET)})",
                 f"mIoU gain {gain['miou']:+.3f} ({verdict(gain['miou'], GAIN_TARGET)})",
                 f"box/true area in [{lo:g}, {hi:g}]: {area}"]
        if all("shuffled" in results[s] for s in seeds):
            margin = min(results[s][arm]["final"]["miou"] - results[s]["shuffled"]["final"]["miou"] for s in seeds)
            parts.append(f"mIoU over shuffled {margin:+.3f} (>= +{SHUFFLED_MARGIN:g}: {verdict(margin, SHUFFLED_MARGIN)})")
        lines.append(f"{arm} targets, worst seed: " + "; ".join(parts))
    return lines


# Issue 23 item 4: GRPO against continued SFT from a start that has plateaued.
PLATEAU_GAIN = 0.01  # one more SFT budget (the sft arm) adds under this acc@0.5: the start has plateaued
BEYOND_SFT = 0.03    # GRPO's acc@0.5 above equal-time SFT, the minimum over seeds


def beyond_sft_lines(results: dict[int, dict], out: Path) -> list[str]:
    """Per seed with both arms: whether its start had plateaued (the sft arm's acc@0.5 gain), and GRPO's final
    model against equal-time SFT's on the same rows (paired); then item 4's target over those seeds."""
    seeds = [s for s in sorted(results) if "grpo" in results[s] and "sft" in results[s]]
    if not seeds:
        return []
    lines = ["grpo against equal-time sft on the same validation rows (mean, paired standard error, verdict), "
             f"with the sft arm's own acc@0.5 gain (under +{PLATEAU_GAIN:g}: the start had plateaued):"]
    leads, flat = [], 0
    for s in seeds:
        sft_gain = results[s]["sft"]["final"]["acc50"] - results[s]["start"]["acc50"]
        plateaued = sft_gain < PLATEAU_GAIN
        flat += plateaued
        miou, acc = paired_change(out, s, results[s], "sft", "grpo")
        leads.append(results[s]["grpo"]["final"]["acc50"] - results[s]["sft"]["final"]["acc50"])
        lines.append(f"  seed {s}: sft acc@0.5 gain {sft_gain:+.3f} ({'plateaued' if plateaued else 'not plateaued'}); "
                     f"grpo minus sft mIoU {paired(miou)}, acc@0.5 {paired(acc)}")
    worst = min(leads)
    lines.append(f"grpo over equal-time sft, worst seed: acc@0.5 {worst:+.3f} (>= +{BEYOND_SFT:g}: "
                 f"{verdict(worst, BEYOND_SFT)}); "
                 f"starts plateaued: {flat} of {len(seeds)}")
    return lines

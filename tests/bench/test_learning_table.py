"""medrl.bench.learning_table: the bench_learning table, paired changes, issue 23's targets (no trainer runs)."""

from __future__ import annotations

import json
from pathlib import Path

from medrl.bench import learning_table as lt


def _final(miou, acc50, step=10):
    return {"step": step, "train_s": 600.0, "miou": miou, "acc50": acc50, "reward": miou, "n": 3}


def _scores(folder: Path, ratios: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    t = [0.0, 0.0, 0.25, 0.25]
    rows = [{"pred_boxes": [[0.0, 0.0, 0.25, 0.25 * r]], "true_boxes": [t]} for r in ratios]
    (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_gives_min_median_max_over_seeds_and_margins_over_shuffled(tmp_path):
    results = {}
    figures = {0: {"start": (0.30, 0.20), "grpo": (0.35, 0.22), "grpo_giou": (0.40, 0.30), "shuffled": (0.28, 0.18)},
               1: {"start": (0.26, 0.10), "grpo": (0.33, 0.12), "grpo_giou": (0.30, 0.16), "shuffled": (0.27, 0.11)},
               2: {"start": (0.28, 0.16), "grpo": (0.30, 0.16), "grpo_giou": (0.36, 0.24), "shuffled": (0.20, 0.09)}}
    areas = {"start": [1.2, 1.2], "grpo": [2.0, 2.0], "grpo_giou": [1.0, 1.0], "shuffled": [3.0, 3.0]}
    for seed, arms in figures.items():
        results[seed] = {"start": _final(*arms["start"], step=0)}
        for arm, (miou, acc) in arms.items():
            if arm != "start":
                results[seed][arm] = {"curve": [], "final": _final(miou, acc)}
            ratios = [r * (1 + seed / 10) for r in areas[arm]]  # seed 0, 1, 2: x1.0, x1.1, x1.2
            _scores(lt.final_eval_dir(tmp_path, seed, arm, results[seed]), ratios)
    text = lt.table(results, ["grpo", "grpo_giou", "shuffled"], tmp_path)
    lines = {line.split()[0]: line for line in text.splitlines()[2:6]}
    # grpo_giou: mIoU 0.30/0.36/0.40, gain +0.04/+0.08/+0.10, acc@0.5 0.16/0.24/0.30, gain +0.06/+0.08/+0.10
    assert lines["grpo_giou"].split()[2:7] == ["0.300/0.360/0.400", "+0.040/+0.080/+0.100", "0.160/0.240/0.300",
                                               "+0.060/+0.080/+0.100", "1.00/1.10/1.20"]
    assert lines["grpo"].split()[-2:] == ["2.00/2.20/2.40", "-"]  # s/step: none recorded in these results
    assert lines["start"].split()[-1] == "1.20/1.32/1.44"
    assert "grpo_giou mIoU minus shuffled mIoU, per seed: +0.120, +0.030, +0.160" in text
    assert "grpo mIoU minus shuffled mIoU, per seed: +0.070, +0.060, +0.100" in text
    assert "shuffled mIoU minus" not in text
    # Issue 23's targets, worst seed: giou gains acc +0.06 and mIoU +0.04, areas 1.00..1.20, over shuffled +0.03.
    assert ("grpo_giou targets, worst seed: acc@0.5 gain +0.060 (met); mIoU gain +0.040 (missed by 0.010); "
            "box/true area in [0.8, 1.25]: 1.00..1.20 (met); mIoU over shuffled +0.030 (>= +0.04: missed by 0.010)"
            in text)
    assert "grpo targets, worst seed: acc@0.5 gain +0.000 (missed by 0.050)" in text
    assert "box/true area in [0.8, 1.25]: 2.00..2.40 (missed by 1.15)" in text


def test_table_gives_each_seeds_paired_change_against_its_start(tmp_path):
    def scored(folder: Path, ious: list, accs: list) -> None:  # medrl eval's rows: key, metrics (None: no finding)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"key": f"{i}:r", "metrics": {"iou": iou, "acc@0.5": acc}, "pred_boxes": [], "true_boxes": []}
                for i, (iou, acc) in enumerate(zip(ious, accs))]
        (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    results = {0: {"start": _final(0.3, 0.5, step=0), "grpo": {"curve": [], "final": _final(0.4, 0.75)}}}
    scored(lt.final_eval_dir(tmp_path, 0, "start", results[0]), [0.2, 0.4, None, None], [0, 0, 1, 1])
    # IoU diffs +0.3, +0.1 on the boxed rows (mean +0.2, SE 0.1): noise; acc diffs 1, 0, 0, 0 (mean 0.25, SE 0.25)
    scored(lt.final_eval_dir(tmp_path, 0, "grpo", results[0]), [0.5, 0.5, None, None], [1, 0, 1, 1])
    text = lt.table(results, ["grpo"], tmp_path)
    assert "  grpo           mIoU +0.200 (0.100, noise); acc@0.5 +0.250 (0.250, noise)" in text
    scored(lt.final_eval_dir(tmp_path, 0, "grpo", results[0]), [0.6, 0.8, None, None], [1, 1, 1, 1])
    assert "mIoU +0.400 (0.000, up); acc@0.5 +0.500 (0.289, noise)" in lt.table(results, ["grpo"], tmp_path)


def test_table_gives_every_grpo_arms_seconds_per_step(tmp_path):
    results = {}
    for seed in (0, 1):
        results[seed] = {"start": _final(0.3, 0.2, step=0),
                         "grpo": {"curve": [], "final": _final(0.35, 0.25), "s_step": 10.0 + seed},
                         "dapo": {"curve": [], "final": _final(0.40, 0.30), "s_step": 12.5 + 2 * seed},
                         "sft": {"curve": [], "final": _final(0.31, 0.21)}}
        for arm in results[seed]:
            _scores(lt.final_eval_dir(tmp_path, seed, arm, results[seed]), [1.0])
    text = lt.table(results, ["grpo", "dapo", "sft"], tmp_path).splitlines()
    header = text[1].split()
    assert header[-1] == "s/step"
    rows = {line.split()[0]: line.split() for line in text[2:6]}
    assert rows["grpo"][-1] == "10.00/10.50/11.00" and rows["dapo"][-1] == "12.50/13.50/14.50"
    assert len(rows["sft"]) == len(rows["grpo"]) - 1 and rows["sft"][-1] == "1.00/1.00/1.00"  # SFT: no verl step time


def _scored(folder: Path, ious: list, accs: list) -> None:
    """medrl eval's scores.jsonl rows: key and metrics (iou None: a no-finding row)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"key": f"{i}:r", "metrics": {"iou": iou, "acc@0.5": acc}, "pred_boxes": [], "true_boxes": []}
            for i, (iou, acc) in enumerate(zip(ious, accs))]
    (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_beyond_sft_lines_check_each_start_plateaued_and_pair_grpo_with_equal_time_sft(tmp_path):
    results = {0: {"start": _final(0.3, 0.5, step=0), "sft": {"curve": [], "final": _final(0.3, 0.505, step=500)},
                   "grpo": {"curve": [], "final": _final(0.5, 0.75)}},
               1: {"start": _final(0.3, 0.5, step=0), "sft": {"curve": [], "final": _final(0.4, 0.6, step=1000)},
                   "grpo": {"curve": [], "final": _final(0.4, 0.6)}}}
    _scored(lt.final_eval_dir(tmp_path, 0, "sft", results[0]), [0.2, 0.4, None, None], [0, 0, 1, 1])
    # grpo against sft, seed 0: IoU +0.3, +0.1 (mean +0.2, SE 0.1); acc 1, 0, 0, 0 (mean 0.25, SE 0.25)
    _scored(lt.final_eval_dir(tmp_path, 0, "grpo", results[0]), [0.5, 0.5, None, None], [1, 0, 1, 1])
    for arm in ("sft", "grpo"):  # seed 1: the same answers from both arms
        _scored(lt.final_eval_dir(tmp_path, 1, arm, results[1]), [0.5, 0.5, None, None], [1, 0, 1, 1])
    lines = lt.beyond_sft_lines(results, tmp_path)
    assert lines[1] == ("  seed 0: sft acc@0.5 gain +0.005 (plateaued); "
                        "grpo minus sft mIoU +0.200 (0.100, noise), acc@0.5 +0.250 (0.250, noise)")
    assert lines[2] == ("  seed 1: sft acc@0.5 gain +0.100 (not plateaued); "
                        "grpo minus sft mIoU +0.000 (0.000, noise), acc@0.5 +0.000 (0.000, noise)")
    assert lines[3] == ("grpo over equal-time sft, worst seed: acc@0.5 +0.000 (>= +0.03: missed by 0.030); "
                        "starts plateaued: 1 of 2")
    for seed in results:  # the table also pairs each arm with the start
        _scored(lt.final_eval_dir(tmp_path, seed, "start", results[seed]), [0.2, 0.4, None, None], [0, 0, 1, 1])
    assert lines[3] in lt.table(results, ["grpo", "sft"], tmp_path)
    results[1]["grpo"]["final"]["acc50"] = 0.64  # a lead of +0.04 in every seed meets the target
    assert "acc@0.5 +0.040 (>= +0.03: met)" in lt.beyond_sft_lines(results, tmp_path)[-1]
    del results[1]["sft"], results[0]["grpo"]
    assert lt.beyond_sft_lines(results, tmp_path) == []  # no seed with both arms: nothing to say

"""Learning measurements: validation curves from verl's dumps, the paired verdict."""

from __future__ import annotations

import json
import math

import pytest

from medrl.training import learning


def _dump(folder, step, ious, scores=None):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{step}.jsonl", "w") as fh:
        for i, v in enumerate(ious):
            fh.write(json.dumps({"input": f"q{i}", "gts": f"[[{i}]]", "output": "x", "iou": v,
                                 "score": (scores or ious)[i] * 0.9, "step": step}) + "\n")


def test_grpo_curve_reads_dumps_and_places_them_on_training_time(tmp_path):
    stage = tmp_path / "grpo"
    _dump(stage / "validation", 0, [0.2, 0.6, float("nan")])
    _dump(stage / "validation", 2, [0.4, 0.8, 0.5])
    with open(stage / "metrics.jsonl", "w") as fh:
        for step, secs in ((1, 10.0), (2, 12.5)):
            fh.write(json.dumps({"step": step, "data": {"timing_s/step": secs}}) + "\n")
    first, last = learning.grpo_curve(stage)
    assert (first.step, first.train_s, last.step, last.train_s) == (0, 0.0, 2, 22.5)
    assert first.miou == pytest.approx(0.8 / 3)  # NaN (no IoU read) counts as a miss
    assert first.acc50 == pytest.approx(1 / 3) and last.acc50 == pytest.approx(2 / 3)
    assert last.reward == pytest.approx(0.9 * 1.7 / 3)
    mean, se, n = learning.paired_change(learning.validation_rows(stage, 0), learning.validation_rows(stage, 2))
    assert n == 3 and mean == pytest.approx((0.2 + 0.2 + 0.5) / 3) and se > 0


def test_describe_change_says_rise_fall_or_noise():
    assert learning.describe_change("a", "b", 0.05, 0.01, 100, 0.3, 0.35).endswith("a rise.")
    assert learning.describe_change("a", "b", -0.05, 0.01, 100, 0.3, 0.25).endswith("a fall.")
    assert "no change beyond noise" in learning.describe_change("a", "b", 0.01, 0.01, 100, 0.3, 0.31)
    assert "no paired rows" in learning.describe_change("a", "b", math.nan, math.nan, 0, 0.3, 0.3)


def test_box_area_ratio_is_the_median_over_rows_with_matched_boxes(tmp_path):
    rows = [{"pred_boxes": [[0, 0, 0.2, 0.2]], "true_boxes": [[0, 0, 0.1, 0.1]]},   # 4x
            {"pred_boxes": [[0, 0, 0.1, 0.1]], "true_boxes": [[0, 0, 0.1, 0.1]]},   # 1x
            {"pred_boxes": [[0, 0, 0.1, 0.2]], "true_boxes": [[0, 0, 0.1, 0.1]]},   # 2x
            {"pred_boxes": [], "true_boxes": [[0, 0, 0.1, 0.1]]},                   # no box: left out
            {"pred_boxes": [[0.5, 0.5, 0.6, 0.6]], "true_boxes": [[0, 0, 0.1, 0.1]]},  # no overlap: left out
            # two findings, matched one to one: (0.02 + 0.01) / (0.01 + 0.01)
            {"pred_boxes": [[0.5, 0.5, 0.6, 0.6], [0, 0, 0.2, 0.1]], "true_boxes": [[0, 0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]]},
            {"pred_boxes": [[0, 0, 0.5, 0.5]], "true_boxes": []}]                    # no-finding truth: left out
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert learning.box_area_ratio(tmp_path) == pytest.approx(1.75)  # median of 4, 1, 2, 1.5
    (tmp_path / "scores.jsonl").write_text(json.dumps(rows[3]) + "\n")
    assert math.isnan(learning.box_area_ratio(tmp_path))


def test_run_summary_states_the_box_size_and_warns_when_boxes_grew(tmp_path, monkeypatch):
    from medrl.training import summary

    run = tmp_path / "run"
    _dump(run / "grpo" / "validation", 0, [0.3, 0.5])
    _dump(run / "grpo" / "validation", 2, [0.4, 0.5])
    for folder in (run / "model", run / "grpo" / "merged"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    true = [[0.0, 0.0, 0.25, 0.25]]
    boxes = {"before_SFT": [[0.0, 0.0, 0.25, 0.25]], "after_RL": [[0.0, 0.0, 0.5, 0.5]]}  # 1x, then 4x

    def fake_evaluate(model_dir, val, out, spec, step=0, train_s=0.0, max_new_tokens=64):
        out.mkdir(parents=True)
        (out / "scores.jsonl").write_text(json.dumps({"pred_boxes": boxes[out.name], "true_boxes": true}) + "\n")
        return learning.ValPoint(step, train_s, 0.3, 0.0, 0.3, 1)

    monkeypatch.setattr(learning, "evaluate", fake_evaluate)
    lines = summary.learning_section(run, {"data": {"val": {"path": "val.parquet"}}}, "grpo", None)
    assert "- before SFT: Box size: the model's boxes are 1.00 times the true area" in "\n".join(lines)
    assert any(line.startswith("- after RL: WARNING: the model's boxes are 4.00 times the true area") and
               "boxes have grown" in line for line in lines)


def test_reward_extra_keys_become_training_metrics():
    from medrl.training import reward_metrics

    nan = float("nan")
    infos = [{"iou/area_ratio": 2.0, "iou/n_matched": 1.0, "iou/hit50": 0.0, "bleu": nan},
             {"iou/area_ratio": 4.0, "iou/n_matched": 1.0, "iou/hit50": 1.0, "bleu": nan},
             {"iou/area_ratio": 1.0, "iou/n_matched": 0.0, "iou/hit50": 0.0, "bleu": nan},  # unmatched: neutral 1.0
             {"iou/area_ratio": nan, "iou/n_matched": nan, "iou/hit50": nan, "bleu": 0.5}]  # a report row
    m = reward_metrics.reward_extra_metrics(infos)
    assert m["reward_extra/iou/area_ratio/mean"] == pytest.approx(7 / 3)
    assert m["reward_extra/iou/area_ratio/median_matched"] == pytest.approx(3.0)  # rows with a matched box only
    assert m["reward_extra/iou/hit50/mean"] == pytest.approx(1 / 3) and m["reward_extra/bleu/mean"] == 0.5
    assert reward_metrics.reward_extra_metrics([{"area_ratio": 1.0, "n_matched": 0.0}]) == {
        "reward_extra/area_ratio/mean": 1.0, "reward_extra/n_matched/mean": 0.0}


def test_training_step_reads_each_samples_reward_info_and_skips_padding(monkeypatch):
    import sys
    from types import SimpleNamespace

    from medrl.training import reward_metrics

    batch = SimpleNamespace(keys=["a", "b", "c"], partition_id="train",
                            tags=[{}, {"is_padding": True}, {}])
    asked = {}

    def kv_batch_get(keys, partition_id, select_fields):
        asked.update(keys=keys, partition_id=partition_id, fields=select_fields)
        return {"extra_fields": [{"reward_extra_info": {"hit50": 1.0}}, {"reward_extra_info": {"hit50": 0.0}},
                                 {"other": 1}]}

    assert reward_metrics.step_reward_infos(batch, kv_batch_get) == [{"hit50": 1.0}]
    assert asked == {"keys": ["a", "b", "c"], "partition_id": "train", "fields": ["extra_fields"]}

    class Base:
        def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
            metrics["critic/score/mean"] = 0.5

    class Trainer(reward_metrics.RewardMetricsMixin, Base):
        pass

    monkeypatch.setitem(sys.modules, "transfer_queue", SimpleNamespace(kv_batch_get=kv_batch_get))
    metrics: dict = {}
    Trainer()._compute_metrics(batch, metrics, {}, 3, 0)
    assert metrics == {"critic/score/mean": 0.5, "reward_extra/hit50/mean": 1.0}


def test_read_metrics_merges_every_attempt_in_the_order_they_ran(tmp_path):
    """A stage restarted 11 times: metrics.10 ran after metrics.2, and the current file after both."""
    def write(name, *recs):
        (tmp_path / name).write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in recs))

    for n in range(11):
        write(f"metrics.{n}.jsonl", (5, {"loss": float(n)}))
    write("metrics.jsonl", (6, {"loss": 99.0}))
    write("metrics.old.jsonl", (5, {"loss": -1.0}))  # not an attempt of this stage
    steps = learning.read_metrics(tmp_path)
    assert steps == {5: {"loss": 10.0}, 6: {"loss": 99.0}}

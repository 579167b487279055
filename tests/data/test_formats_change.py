"""Bi-temporal change pairs: action-vector math, two-image rows, the change reward, verl and `medrl check`."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from formats_util import check_clean, load_with_verl, n_images, run_cli
from medrl.change_action import action_vector
from medrl.data.change import (NO_SECOND_IMAGE, SIZE_MISMATCH, ChangeOptions, build_change_rows, change_boxes,
                               read_arrow)
from medrl.data.records import RecordOptions
from medrl.data.rejects import RejectError

# ------------------------------------------------------------------ boxes


def test_change_boxes_pixels_norm_and_no_change():
    assert change_boxes([16, 32, 48, 64], 64, 128) == [(0.25, 0.25, 0.75, 0.5)]
    assert change_boxes([0.1, 0.2, 0.3, 0.4], 64, 64) == [(0.1, 0.2, 0.3, 0.4)]
    assert change_boxes(np.array([[0, 0, 32, 32], [32, 32, 64, 64]]), 64, 64) == [(0, 0, .5, .5), (.5, .5, 1, 1)]
    for empty in (None, [], [0, 0, 0, 0]):
        assert change_boxes(empty, 64, 64) == []
    for bad, reason in (([1, 2, 3], "box with 3 numbers"), ([10, 10, 70, 20], "box outside the image"),
                        ("10,10,20,20", "boxes are not JSON"), ([5, 5, 2, 9], "box with x2 < x1 or y2 < y1")):
        with pytest.raises(RejectError) as exc:
            change_boxes(bad, 64, 64)
        assert exc.value.reason == reason

# ------------------------------------------------------------------ rows


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("change")
    shutil.copytree(repo_root / "examples/change/levir_cc_like", out / "levir_cc_like")
    return out


def test_rows_have_two_images_in_order_and_the_action(sample_dir):
    item = next(read_arrow(sample_dir / "levir_cc_like", "train"))
    res = build_change_rows(item, ChangeOptions(("grounding", "action", "caption")), RecordOptions())
    assert [r["data_source"] for r in res.rows] == ["medrl/change_grounding", "medrl/change_action",
                                                    "medrl/change_caption"]
    w, h = res.rows[0]["extra_info"]["width"], res.rows[0]["extra_info"]["height"]
    want = pytest.approx(action_vector(item.data["bbox"], w, h), abs=1e-4)
    for row in res.rows:
        assert row["prompt"][0]["content"].count("<image>") == 2 == len(row["images"])
        assert row["images"][0]["bytes"] == item.data["image"]["bytes"]   # before first
        assert row["images"][1]["bytes"] == item.data["image2"]["bytes"]  # after second
        assert row["extra_info"]["action"] == want
    assert json.loads(res.rows[1]["reward_model"]["ground_truth"]) == row["extra_info"]["action"]
    x1, y1, x2, y2 = item.data["bbox"]
    (box,) = json.loads(res.rows[0]["reward_model"]["ground_truth"])  # format_boxes keeps 4 decimals
    assert box == pytest.approx([x1 / w, y1 / h, x2 / w, y2 / h], abs=1e-4)
    assert res.rows[2]["reward_model"]["ground_truth"] == item.data["caption"][0]


def _png(size) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (80, 90, 70)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_pairs_have_reasons():
    from medrl.data.readers import SourceRecord

    opts, rec = ChangeOptions(), RecordOptions()
    pair = {"id": "p", "image": {"bytes": _png((32, 32))}, "caption": "x", "bbox": [1, 1, 4, 4]}
    for data, reason in (({**pair, "image2": None}, NO_SECOND_IMAGE),
                         ({**pair, "image2": {"bytes": _png((32, 16))}}, SIZE_MISMATCH)):
        with pytest.raises(RejectError) as exc:
            build_change_rows(SourceRecord(data, "d", 0), opts, rec)
        assert exc.value.reason == reason
    no_change = {**pair, "image2": {"bytes": _png((32, 32))}, "bbox": []}
    res = build_change_rows(SourceRecord(no_change, "d", 0), ChangeOptions(("grounding", "action")), rec)
    assert [r["reward_model"]["ground_truth"] for r in res.rows] == ["[]"]
    assert res.dropped == {"no-change pair: no action row": 1}

# ------------------------------------------------------------------ the sample end to end


@pytest.fixture(scope="module")
def converted(sample_dir):
    out = sample_dir / "rl"
    assert run_cli("change", sample_dir / "levir_cc_like", "--output_dir", out,
                   "--tasks", "grounding", "action", "caption", "--no_progress") == 0
    return out


def test_sample_splits_and_counts(converted):
    train = json.loads((converted / "train_summary.json").read_text())
    test = json.loads((converted / "test_summary.json").read_text())
    assert (train["records_converted"], test["records_converted"]) == (12, 4)
    assert train["rows_written"] == {"train": 3 * 12 - 3} and train["turns_dropped"] == {
        "no-change pair: no action row": 3}
    assert train["rejected"] == test["rejected"] == 0


@pytest.mark.verl_load
def test_sample_rows_load_in_verl_and_pass_check(converted, tiny_model_dir):
    from medrl.rewards import compose

    parquet = converted / "train.parquet"
    items = load_with_verl(parquet, tiny_model_dir)
    assert len(items) == 33 and all(n_images(i) == 2 for i in items)
    check_clean(parquet, tiny_model_dir)  # medrl's default routes cover all three change data sources
    for source in ("medrl/change_grounding", "medrl/change_action", "medrl/change_caption"):
        item = next(i for i in items if i["data_source"] == source)
        truth = item["reward_model"]["ground_truth"]
        out = compose.compute_score(source, f"<think>compare</think><answer>{truth}</answer>", truth,
                                    item["extra_info"])
        assert out["score"] == pytest.approx(1.0), (source, out)  # the truth itself scores 1 on every route


def test_ref_mode_writes_image_files(sample_dir, tiny_model_dir):
    out = sample_dir / "ref"
    assert run_cli("change", sample_dir / "levir_cc_like", "--output_dir", out, "--image_mode", "ref",
                   "--tasks", "grounding", "--no_progress") == 0
    rows = pq.read_table(out / "test.parquet").to_pylist()
    assert len(rows) == 4 and all(r["images"][0]["image"].startswith("file://") for r in rows)
    assert len(list((out / "images").glob("*.png"))) == 2 * 16
    check_clean(out / "test.parquet", tiny_model_dir)


def test_not_a_saved_dataset_is_named(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="junk: not a datasets.save_to_disk folder"):
        list(read_arrow(tmp_path / "junk"))


def test_prompt_length_rejects_one_row_and_keeps_the_pair_other_rows(sample_dir):
    out = sample_dir / "len"
    # grounding prompts are 320 characters, caption prompts 206: only the grounding rows are too long
    assert run_cli("change", sample_dir / "levir_cc_like", "--output_dir", out, "--tasks", "grounding", "caption",
                   "--max_prompt_chars", "300", "--no_progress") == 0
    test = json.loads((out / "test_summary.json").read_text())
    assert test["rows_written"] == {"test": 4} and test["rejects_by_reason"] == {"prompt over the character limit": 4}
    assert test["task"] == "change grounding+caption" and test["inputs"] == [str(sample_dir / "levir_cc_like")]
    rows = pq.read_table(out / "test.parquet").to_pylist()
    assert {r["data_source"] for r in rows} == {"medrl/change_caption"}
    assert [r["extra_info"]["index"] for r in rows] == [0, 1, 2, 3]


def test_sft_think_rule_is_the_llava_converters(sample_dir):
    """`--sft_think ""` is an empty think in change rows as in LLaVA rows; None is the task's default."""
    from medrl.data.change import SFT_THINK
    from medrl.rewards.answer import strict_parts

    item = next(read_arrow(sample_dir / "levir_cc_like", "train"))
    for think, want in ((None, SFT_THINK), ("", ""), ("Look.", "Look.")):
        res = build_change_rows(item, ChangeOptions(("caption",)), RecordOptions(sft=True, sft_think=think))
        assert strict_parts(res.sft_rows[0]["messages"][-1]["content"])[0] == want

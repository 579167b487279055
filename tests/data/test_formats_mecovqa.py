"""MeCoVQA with SA-Med2D masks: mask -> boxes, regions kept, answers kept; verl's RLHFDataset and `medrl check`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from formats_util import check_clean, load_with_verl, n_images, run_cli
from medrl.boxes import format_boxes
from medrl.data import rejects
from medrl.data.mecovqa import (EMPTY_MASK, MASK_NOT_FOUND, UNREADABLE_MASK, MecoOptions, build_meco_rows,
                                mask_boxes, record_kind)
from medrl.data.readers import SourceRecord
from medrl.data.records import RecordOptions
from medrl.data.rejects import RejectError


def test_mask_boxes_one_box_per_region_exact_edges():
    m = np.zeros((20, 40), np.uint8)
    m[10:14, 2:6] = 255     # 16 px
    m[1:3, 30:39] = 1       # 18 px, any non-zero value is foreground
    assert mask_boxes(m, min_area=16) == [(30 / 40, 1 / 20, 39 / 40, 3 / 20), (2 / 40, 10 / 20, 6 / 40, 14 / 20)]


def test_mask_boxes_min_area_and_diagonal_connectivity():
    m = np.zeros((10, 10), np.uint8)
    m[0, 0] = m[1, 1] = m[2, 2] = 255   # one 8-connected region of 3 px
    m[8:10, 8:10] = 255                 # 4 px
    assert mask_boxes(m, min_area=3) == [(0.0, 0.0, 0.3, 0.3), (0.8, 0.8, 1.0, 1.0)]
    assert mask_boxes(m, min_area=4) == [(0.8, 0.8, 1.0, 1.0)]
    assert mask_boxes(m, min_area=5) == []
    assert mask_boxes(np.zeros((4, 4)), 1) == []
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[2:4, 5:9, 1] = 200
    assert mask_boxes(rgb, 1) == [(0.5, 0.2, 0.9, 0.4)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.data())
def test_mask_boxes_single_rectangle_property(w, h, data):
    x1 = data.draw(st.integers(0, w - 1))
    y1 = data.draw(st.integers(0, h - 1))
    x2 = data.draw(st.integers(x1 + 1, w))
    y2 = data.draw(st.integers(y1 + 1, h))
    m = np.zeros((h, w), np.uint8)
    m[y1:y2, x1:x2] = 1
    want = tuple(round(v, 6) for v in (x1 / w, y1 / h, x2 / w, y2 / h))
    assert mask_boxes(m, min_area=1) == [want]
    assert mask_boxes(m, min_area=(x2 - x1) * (y2 - y1) + 1) == []


def _record(tmp_path, kind: str, mask: np.ndarray | None = None, mask_name: str = "m.png") -> SourceRecord:
    Image.new("L", (40, 20), 60).save(tmp_path / "img.png")
    if mask is not None:
        Image.fromarray(mask).save(tmp_path / mask_name)
    conv = {
        "grounding": [("human", "<image>\nSegment the lesion."), ("gpt", f"Sure, it is [SEG]. <mask>{mask_name}</mask>")],
        "region": [("human", f"<image>\nWhat is in <region>{mask_name}</region>?"), ("gpt", "A cyst.")],
        "complex": [("human", "<image>\nWhich modality is this?"), ("gpt", "CT.")],
    }[kind]
    data = {"id": f"r-{kind}", "image": "img", "conversations": [{"from": a, "value": b} for a, b in conv]}
    return SourceRecord(data, str(tmp_path / "meco.json"), 0)


def _mask():
    m = np.zeros((20, 40), np.uint8)
    m[10:14, 2:6] = 255
    m[1:3, 30:39] = 255
    m[0, 0] = 255  # speck below the minimum area
    return m


def test_grounding_truth_is_the_mask_boxes(tmp_path):
    item = _record(tmp_path, "grounding", _mask())
    assert record_kind(item.data) == "grounding"
    res = build_meco_rows(item, MecoOptions(min_area=4), RecordOptions())
    (row,) = res.rows
    assert row["data_source"] == "medrl/grounding"
    assert row["reward_model"]["ground_truth"] == format_boxes(mask_boxes(_mask(), 4))
    assert len(json.loads(row["reward_model"]["ground_truth"])) == 2
    assert row["extra_info"]["task_type"] == "mecovqa_grounding"
    assert row["extra_info"]["mask"].endswith("m.png")
    assert "<mask>" not in row["extra_info"]["answer"] and "[SEG]" not in row["extra_info"]["answer"]


def test_region_is_kept_in_prompt_and_extra_info(tmp_path):
    item = _record(tmp_path, "region", _mask())
    (row,) = build_meco_rows(item, MecoOptions(min_area=4), RecordOptions()).rows
    assert row["extra_info"]["region"] == [2 / 40, 0.05, 39 / 40, 0.7]
    assert "region [0.05, 0.05, 0.975, 0.70]" in row["prompt"][-1]["content"]
    assert "<region>" not in row["prompt"][-1]["content"]
    assert row["reward_model"]["ground_truth"] == "A cyst." and row["data_source"] == "medrl/report"


def test_complex_keeps_answer(tmp_path):
    (row,) = build_meco_rows(_record(tmp_path, "complex"), MecoOptions(complex_task="vqa"), RecordOptions()).rows
    assert (row["reward_model"]["ground_truth"], row["data_source"]) == ("CT.", "medrl/vqa")
    assert "region" not in row["extra_info"] and row["extra_info"]["task_type"] == "mecovqa_complex"


@pytest.mark.parametrize("case,reason", [
    ("missing", MASK_NOT_FOUND), ("small", EMPTY_MASK), ("corrupt", UNREADABLE_MASK), ("nomask", rejects.NOT_GROUNDING),
])
def test_bad_masks_have_reasons(tmp_path, case, reason):
    if case == "missing":
        item = _record(tmp_path, "grounding")
    elif case == "small":
        m = np.zeros((20, 40), np.uint8)
        m[5:7, 5:7] = 255
        item = _record(tmp_path, "grounding", m)
    elif case == "corrupt":
        item = _record(tmp_path, "grounding")
        (tmp_path / "m.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    else:
        item = _record(tmp_path, "complex")
    kind = "grounding" if case == "nomask" else "auto"
    with pytest.raises(RejectError) as exc:
        build_meco_rows(item, MecoOptions(kind=kind, min_area=16), RecordOptions())
    assert exc.value.reason == reason


@pytest.fixture(scope="module")
def converted(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("meco")
    shutil.copytree(repo_root / "examples/mecovqa", out / "src")
    files = [out / "src" / f"MeCoVQA-{k}.json" for k in ("Complex", "Region", "Grounding")]
    assert run_cli("mecovqa", *files, "--output_dir", out / "rl", "--image_root", out / "src", "--no_progress") == 0
    return out


def test_sample_converts_every_kind(converted):
    summary = json.loads((converted / "rl/summary.json").read_text())
    assert summary["records_converted"] == 12 and summary["rejected"] == 0
    rows = pq.read_table(converted / "rl/train.parquet").to_pylist()
    kinds = {r["extra_info"]["task_type"] for r in rows}
    assert kinds == {"mecovqa_complex", "mecovqa_region", "mecovqa_grounding"}
    for r in rows:
        if r["extra_info"]["task_type"] == "mecovqa_grounding":
            mask = np.array(Image.open(r["extra_info"]["mask"]))
            assert r["reward_model"]["ground_truth"] == format_boxes(mask_boxes(mask, 16))  # the speck is not a box


@pytest.mark.verl_load
def test_sample_rows_load_in_verl_and_pass_check(converted, tiny_model_dir):
    parquet = converted / "rl/train.parquet"
    items = load_with_verl(parquet, tiny_model_dir)
    assert len(items) == 12 and all(n_images(i) == 1 for i in items)
    regions = [i for i in items if i["extra_info"]["task_type"] == "mecovqa_region"]
    assert regions and all(len(i["extra_info"]["region"]) == 4 for i in regions)
    check_clean(parquet, tiny_model_dir)


def test_strict_discards_parquet_but_keeps_rejects(tmp_path):
    item = _record(tmp_path, "grounding")  # its mask file is missing
    (tmp_path / "meco.json").write_text(json.dumps([item.data]))
    rc = run_cli("mecovqa", tmp_path / "meco.json", "--output_dir", tmp_path / "out", "--strict", "--no_progress")
    assert rc == 1
    assert not (tmp_path / "out/train.parquet").exists()
    (rej,) = [json.loads(x) for x in (tmp_path / "out/rejects.jsonl").read_text().splitlines()]
    assert (rej["reason"], rej["id"]) == (MASK_NOT_FOUND, "r-grounding")
    assert json.loads((tmp_path / "out/summary.json").read_text())["strict_failure"]


def test_worker_processes_and_shuffle_give_the_sequential_rows(tmp_path, repo_root, monkeypatch):
    from medrl.data import chunks

    shutil.copytree(repo_root / "examples/mecovqa", tmp_path / "src")
    files = [tmp_path / "src" / f"MeCoVQA-{k}.json" for k in ("Complex", "Region", "Grounding")]
    monkeypatch.setattr(chunks, "INLINE_CHUNKS", 0)  # start the pool even for 12 records
    monkeypatch.setattr(chunks, "CHUNK", 2)
    sent = []

    class Pool(chunks.cf.ProcessPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            sent.append(args[1])  # the builder each chunk travels with
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(chunks.cf, "ProcessPoolExecutor", Pool)
    common = ["--image_root", tmp_path / "src", "--val_fraction", "0.3", "--sft", "--no_progress"]
    for w in ("1", "2"):
        assert run_cli("mecovqa", *files, "--output_dir", tmp_path / f"w{w}", "--workers", w, *common) == 0
    for name in ("train.parquet", "val.parquet", "sft_train.parquet", "sft_val.parquet"):
        one, two = pq.read_table(tmp_path / "w1" / name), pq.read_table(tmp_path / "w2" / name)
        assert one.num_rows > 0 and one.equals(two), name  # the builder reached the workers and order is kept
    assert len(sent) == 6 and {b.func for b in sent} == {build_meco_rows}
    summary = json.loads((tmp_path / "w2/summary.json").read_text())
    assert summary["task"] == "mecovqa auto" and "options" not in summary
    assert pq.read_schema(tmp_path / "w2/train.parquet").field("extra_info").type.names[-7:] == [
        "task_type", "region", "region_mask", "mask", "action", "image2", "mix_group"]

    assert run_cli("mecovqa", *files, "--output_dir", tmp_path / "s", "--shuffle", "--limit", "5", "--workers", "2",
                   *common) == 0
    summary = json.loads((tmp_path / "s/summary.json").read_text())
    assert summary["records_converted"] == 5 and summary["records_filtered"] == {"not in the seeded sample": 7}

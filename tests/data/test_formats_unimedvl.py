"""UniMedVL JSONL through the LLaVA pipeline: reasons, rows, verl's RLHFDataset and `medrl check`."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from formats_util import check_clean, load_with_verl, n_images, run_cli
from medrl import jsonl
from medrl.data.rejects import RejectError
from medrl.data.unimedvl import BAD_IMAGE_ENTRY, NO_TASK_TYPE, UNSUPPORTED_OUTPUT_IMAGE, read_unimedvl, to_llava
from medrl.data.unimedvl_sample import write_sample

MSG = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Clear lungs."}]


def test_to_llava_maps_fields_and_size():
    rec = to_llava({"id": 7, "main_task_type": "image_understanding", "message": MSG,
                    "input_img": [{"path": "a.png", "height": 200, "width": 100}]})
    assert rec == {"conversations": MSG, "images": ["a.png"], "dataset": "image_understanding", "id": 7,
                   "width": 100, "height": 200}


@pytest.mark.parametrize("record,reason", [
    ({"main_task_type": "image_to_image", "message": MSG, "input_img": [{"path": "a.png"}],
      "output_img": [{"path": "b.png", "height": 8, "width": 8}]}, UNSUPPORTED_OUTPUT_IMAGE),
    ({"main_task_type": "x", "input_img": [{"path": "a.png"}],
      "message": [MSG[0], {"from": "gpt", "value": "Here it is <image>"}]}, UNSUPPORTED_OUTPUT_IMAGE),
    ({"message": MSG, "input_img": [{"path": "a.png"}]}, NO_TASK_TYPE),
    ({"main_task_type": "x", "message": MSG, "input_img": [{"height": 3}]}, BAD_IMAGE_ENTRY),
    ({"main_task_type": "x", "message": MSG, "input_img": "a.png"}, BAD_IMAGE_ENTRY),
])
def test_bad_records_have_reasons(record, reason):
    with pytest.raises(RejectError) as exc:
        to_llava(record)
    assert exc.value.reason == reason


def test_reader_counts_output_image_records(tmp_path):
    src = tmp_path / "u.jsonl"
    lines = [json.dumps(r) for r in [
        {"main_task_type": "a", "message": MSG, "input_img": [{"path": "x.png"}]},
        {"main_task_type": "b", "message": MSG, "input_img": [{"path": "x.png"}], "output_img": [{"path": "y.png"}]},
    ]]
    src.write_text("\n".join(lines + ["not json {"]) + "\n")
    items = list(read_unimedvl(src))
    kinds = [getattr(i, "reason", "record") for i in items]
    assert kinds == ["record", UNSUPPORTED_OUTPUT_IMAGE, "invalid JSON"]
    assert items[1].position == 1 and items[1].source == str(src)


def test_pixel_boxes_use_input_img_size(tmp_path):
    from PIL import Image

    Image.new("L", (96, 96), 40).save(tmp_path / "a.png")
    rec = {"id": "g1", "main_task_type": "grounding", "input_img": [{"path": "a.png", "height": 200, "width": 100}],
           "message": [{"from": "human", "value": "<image>\nLocate the nodule."},
                       {"from": "gpt", "value": "The nodule is at [10, 20, 50, 60]."}]}
    (tmp_path / "g.jsonl").write_text(json.dumps(rec) + "\n")
    assert run_cli("unimedvl", tmp_path / "g.jsonl", "--output_dir", tmp_path / "out", "--task", "grounding",
                   "--workers", "1", "--no_progress") == 0
    row = pq.read_table(tmp_path / "out/train.parquet").to_pylist()[0]
    assert json.loads(row["reward_model"]["ground_truth"]) == [[0.1, 0.1, 0.5, 0.3]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("uni")
    shutil.copytree(repo_root / "examples/unimedvl", out / "src")
    rc = run_cli("unimedvl", out / "src/unimedvl.jsonl", "--output_dir", out / "all", "--task", "report",
                 "--workers", "1", "--no_progress", "--json")
    assert rc == 0
    return out


def test_sample_converts_with_counted_rejects(converted):
    summary = json.loads((converted / "all/summary.json").read_text())
    assert summary["records_read"] == 12
    assert summary["records_converted"] == 8
    assert summary["rejects_by_reason"] == {UNSUPPORTED_OUTPUT_IMAGE: 2, "no image": 2}
    rejects = jsonl.read(converted / "all/rejects.jsonl")
    assert sorted(r["id"] for r in rejects if r["reason"] == UNSUPPORTED_OUTPUT_IMAGE) == ["uni-003", "uni-009"]
    rows = pq.read_table(converted / "all/train.parquet").to_pylist()
    assert {r["extra_info"]["dataset"] for r in rows} == {"image_understanding", "vqa"}
    assert all(r["prompt"][-1]["content"].count("<image>") == 1 == len(r["images"]) for r in rows)


def test_dataset_filter_selects_main_task_type(converted):
    assert run_cli("unimedvl", converted / "src/unimedvl.jsonl", "--output_dir", converted / "vqa", "--task", "vqa",
                   "--dataset_filter", "vqa", "--workers", "1", "--no_progress") == 0
    rows = pq.read_table(converted / "vqa/train.parquet").to_pylist()
    assert len(rows) == 2 and {r["reward_model"]["ground_truth"] for r in rows} <= {"Yes.", "No."}
    assert all(r["data_source"] == "medrl/vqa" for r in rows)


@pytest.mark.verl_load
def test_sample_rows_load_in_verl_and_pass_check(converted, tiny_model_dir):
    parquet = converted / "all/train.parquet"
    items = load_with_verl(parquet, tiny_model_dir)
    assert len(items) == 8 and all(n_images(i) == 1 for i in items)
    assert all(i["data_source"] == "medrl/report" for i in items)
    check_clean(parquet, tiny_model_dir)


def test_sample_generator_is_deterministic(tmp_path):
    a, b = write_sample(tmp_path / "a", seed=3), write_sample(tmp_path / "b", seed=3)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a/images/uni_000.png").read_bytes() == (tmp_path / "b/images/uni_000.png").read_bytes()

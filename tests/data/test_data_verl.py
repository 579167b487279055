"""The converter's parquet through verl's real datasets (RLHFDataset, MultiTurnSFTDataset) and `medrl check`."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from medrl.data.convert import ConvertOptions, convert
from medrl.data.images import ImageOptions
from medrl.data.length import LengthOptions, count_prompt_tokens, load_processor
from medrl.data.records import RecordOptions

FILTERS = {"grounding": ["vindr-cxr", "chest-imagenome"], "report": ["mimic-cxr"], "vqa": ["mimic-cxr-vqa"]}


@pytest.fixture(scope="module")
def sample_json(repo_root) -> Path:
    return repo_root / "examples" / "sample" / "sample.json"


@pytest.fixture(scope="module")
def prepared(sample_json, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for task, names in FILTERS.items():
        d = tmp_path_factory.mktemp(task)
        s = convert(ConvertOptions(inputs=[str(sample_json)], output_dir=str(d), dataset_filter=names,
                                   val_fraction=0.2, record=RecordOptions(task=task, sft=True), progress=False))
        assert s["rejected"] == 0, s["rejects_by_reason"]
        assert s["rows_written"]["train"] > 0 and sum(s["rows_written"].values()) > s["rows_written"]["train"] - 1
        out[task] = d
    return out


def _rlhf(path, model_dir, tmp_path, **cfg):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    proc = load_processor(str(model_dir))
    config = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "cache_dir": str(tmp_path),
                               "max_prompt_length": 4096, "filter_overlong_prompts": False,
                               "filter_overlong_prompts_workers": None, **cfg})
    return RLHFDataset(data_files=[str(path)], tokenizer=proc.tokenizer, config=config, processor=proc), proc


@pytest.mark.parametrize("task", ["grounding", "report", "vqa"])
def test_each_task_loads_through_verl_rlhf_dataset(task, prepared, tiny_model_dir, tmp_path):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    ds, proc = _rlhf(prepared[task] / "train.parquet", tiny_model_dir, tmp_path)
    n = pq.read_metadata(prepared[task] / "train.parquet").num_rows
    assert len(ds) == n
    for i in range(len(ds)):
        item = ds[i]
        assert item["data_source"] == f"medrl/{task}"
        parts = [c for m in item["raw_prompt"] for c in m["content"]]
        images = [c["image"] for c in parts if c["type"] == "image"]
        texts = " ".join(c["text"] for c in parts if c["type"] == "text")
        assert len(images) == 1 and isinstance(images[0], Image.Image) and images[0].size == (128, 128)
        assert item["extra_info"]["question"].replace("<image>", "").strip() in texts
        assert item["reward_model"]["ground_truth"]
    # The agent loop's path: images out of raw_prompt, then the processor, gives vision tokens.
    imgs, _, _ = RLHFDataset._process_multi_modal_info(item["raw_prompt"], proc.image_processor.patch_size, {})
    text = proc.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=imgs, return_tensors="pt")
    assert int(inputs["image_grid_thw"].prod()) > 0


def test_file_reference_images_load_through_verl(sample_json, tiny_model_dir, tmp_path):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    out = tmp_path / "ref"
    convert(ConvertOptions(inputs=[str(sample_json)], output_dir=str(out), dataset_filter=["vindr-cxr"], limit=5,
                           record=RecordOptions(images=ImageOptions(mode="ref", max_pixels=200_000)),
                           progress=False))
    ds, proc = _rlhf(out / "train.parquet", tiny_model_dir, tmp_path)
    item = ds[0]
    imgs, _, _ = RLHFDataset._process_multi_modal_info(item["raw_prompt"], proc.image_processor.patch_size, {})
    assert len(imgs) == 1 and isinstance(imgs[0], Image.Image)


@pytest.mark.slow  # the tiny model's processor over every sample row, twice (about 20 s)
def test_exact_token_filter_agrees_with_verls_own_filter(sample_json, tiny_model_dir, tmp_path):
    proc = load_processor(str(tiny_model_dir))
    rows = pq.read_table(_full(sample_json, tmp_path) / "train.parquet").to_pylist()
    lengths = sorted(count_prompt_tokens(r, proc) for r in rows)
    limit = lengths[len(lengths) // 2]
    expect = sum(n <= limit for n in lengths)
    assert 0 < expect < len(rows)
    out = tmp_path / "cut"
    s = convert(ConvertOptions(inputs=[str(sample_json)], output_dir=str(out), progress=False,
                               dataset_filter=FILTERS["grounding"], length=LengthOptions(processor=str(tiny_model_dir), max_prompt_tokens=limit)))
    assert s["rows_written"]["train"] == expect
    assert s["rejects_by_reason"] == {"prompt over the token limit": len(rows) - expect}
    ds, _ = _rlhf(tmp_path / "full" / "train.parquet", tiny_model_dir, tmp_path, filter_overlong_prompts=True,
                  max_prompt_length=limit)
    assert len(ds) == expect  # verl keeps exactly the rows medrl kept


def _full(sample_json, tmp_path) -> Path:
    out = tmp_path / "full"
    if not (out / "train.parquet").exists():
        convert(ConvertOptions(inputs=[str(sample_json)], output_dir=str(out), progress=False,
                               dataset_filter=FILTERS["grounding"]))
    return out


def test_sft_parquet_loads_through_verl_multiturn_sft_dataset(prepared, tiny_model_dir):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    proc = load_processor(str(tiny_model_dir))
    path = prepared["grounding"] / "sft_train.parquet"
    cfg = OmegaConf.create({"max_length": 1024, "truncation": "error", "messages_key": "messages",
                            "image_key": "images"})
    ds = MultiTurnSFTDataset([str(path)], proc.tokenizer, cfg, processor=proc)
    turns = [e["n_turns"] for e in pq.read_table(path).column("extra_info").to_pylist()]
    assert len(ds) == len(turns) and max(turns) == 2
    masks = {}
    for i in range(len(ds)):
        item = ds[i]
        assert item["multi_modal_inputs"]["image_grid_thw"].shape == (1, 3)
        assert item["position_ids"].shape[0] == 4  # Qwen-VL rope positions from the image grid
        masks.setdefault(turns[i], []).append(int(item["loss_mask"].sum()))
    single = sorted(masks[1])[len(masks[1]) // 2]
    assert min(masks[2]) > 1.7 * single  # both answers of a two-turn record are trained


@pytest.mark.verl_load
def test_check_passes_the_converted_files(prepared, tiny_model_dir):
    from medrl.data.check import check_file

    for task in FILTERS:
        report = check_file(prepared[task] / "train.parquet", processor=str(tiny_model_dir), max_prompt_length=1024,
                            progress=False)
        assert report["problems"] == {}, report
        assert all(report["routes"].values())


@pytest.mark.verl_load
def test_check_reports_every_problem_with_its_rows(prepared, tiny_model_dir, tmp_path, capsys):
    from medrl.cli import main
    from medrl.data import check

    table = pq.read_table(prepared["grounding"] / "train.parquet")
    rows = table.to_pylist()[:8]
    rows[0]["prompt"][0]["content"] = "<image><image>" + rows[0]["prompt"][0]["content"]
    png = rows[1]["images"][0]["bytes"]
    rows[1]["images"] = [{"bytes": png[: len(png) // 3]}]
    rows[2]["reward_model"]["ground_truth"] = "[[0.1, 0.2, 0.3]]"
    rows[3]["data_source"] = "nobody/knows"
    rows[4]["images"] = []
    rows[4]["prompt"][0]["content"] = rows[4]["prompt"][0]["content"].replace("<image>", "")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), bad)
    report = check.check_file(bad, processor=str(tiny_model_dir), max_prompt_length=4096, progress=False)
    p = report["problems"]
    assert p[check.P_PLACEHOLDER]["rows"] == [0]
    assert p[check.P_IMAGE]["rows"] == [1]
    assert p[check.P_TRUTH]["rows"] == [2]
    assert p[check.P_ROUTE]["rows"] == [3]
    assert p[check.P_MIXED]["rows"] == [4]
    assert set(p[check.P_DATASET]["rows"]) == {0, 1}  # verl itself fails on these two
    assert check.P_LENGTH not in p
    lengths = sorted(count_prompt_tokens(r, load_processor(str(tiny_model_dir))) for r in rows[5:])
    report = check.check_file(bad, processor=str(tiny_model_dir), max_prompt_length=lengths[0] - 1, progress=False)
    assert set(report["problems"][check.P_LENGTH]["rows"]) >= {5, 6, 7}
    assert main(["check", str(bad), "--no_progress"]) == 1
    assert main(["check", str(prepared["grounding"] / "val.parquet"), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "ground truth does not parse" in out and "OK" in out


def test_truth_problem_rules():
    from medrl.data.check import truth_problem

    assert truth_problem("[]") is None and truth_problem("[[0.1,0.2,0.3,0.4]]") is None
    assert truth_problem("[[0.1,0.2,0.3]]") == "box with 3 numbers"  # the converters' and the rewards' reader
    assert truth_problem("[[10,20,30,40]]") == "coordinates above 1 with no known image size"
    assert truth_problem("[[0.2,0.2,0.2,0.4]]") == "box with zero width or height"
    assert "x2 < x1" in truth_problem("[[0.5,0.2,0.3,0.4]]")
    assert "not JSON" in truth_problem("[[0.1,")
    assert "JSON string" in truth_problem(None)


def test_two_image_rows_load_through_verl(sample_json, tiny_model_dir, tmp_path):
    import json

    recs = json.loads(sample_json.read_text())[:2]
    for r in recs:
        r["images"] = [r.pop("image"), "images/cxr_0005.png"]
        r["conversations"][0]["value"] = r["conversations"][0]["value"].replace("<image>", "Current and prior:")
    src = tmp_path / "two.json"
    src.write_text(json.dumps(recs))
    out = tmp_path / "two"
    s = convert(ConvertOptions(inputs=[str(src)], output_dir=str(out), progress=False,
                               record=RecordOptions(images=ImageOptions(image_root=str(sample_json.parent)))))
    assert s["rows_written"] == {"train": 2}
    ds, _ = _rlhf(out / "train.parquet", tiny_model_dir, tmp_path)
    parts = [c for m in ds[1]["raw_prompt"] for c in m["content"]]
    assert [c["type"] for c in parts][:2] == ["image", "image"]


def test_one_way_to_load_rows_through_verl(prepared, tiny_model_dir):
    """`check_rules.verl_dataset` is how `medrl check` and `medrl wiring` read rows: all rows, raw chat, cache gone."""
    from medrl.data.check_rules import verl_dataset
    from medrl.training.wiring import load_rows

    path = prepared["grounding"] / "train.parquet"
    table = pq.read_table(path).to_pylist()
    with verl_dataset(path, str(tiny_model_dir)) as (ds, proc, config):
        cache = Path(config.cache_dir)
        assert len(ds) == len(table) and "raw_prompt" in ds[0] and proc.tokenizer is not None
    assert not cache.exists()
    rows = load_rows(path, str(tiny_model_dir), {0, 1})
    by_index = {r["extra_info"]["index"]: r for r in table}
    assert set(rows.truth) == {0, 1} and all(rows.truth[i] == by_index[i]["reward_model"]["ground_truth"]
                                             for i in rows.truth)
    assert rows.data_source[0] == "medrl/grounding" and len(rows.image[0]) > 0

"""UniMedVL-style mixing: YAML validation, proportions, slicing, determinism, pixel limits, verl and `medrl check`."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from formats_util import check_clean, load_with_verl, n_images, run_cli
from medrl.data.mixing import MixError, allocate, load_mix, mix


def _yaml(tmp_path: Path, repo_root: Path, **edit) -> Path:
    """The example mix with absolute paths, plus edits: {block: {key: value}}."""
    cfg = yaml.safe_load((repo_root / "examples/unimedvl/mix.yaml").read_text())
    base = repo_root / "examples/unimedvl"
    for entry in cfg["dataset_info"].values():
        for k in ("jsonl_path", "json_path", "path", "data_dir"):
            if k in entry:
                entry[k] = str((base / entry[k]).resolve())
    for block, keys in edit.items():
        if keys is None:
            cfg.pop(block)
        else:
            cfg.setdefault(block, {}).update(keys)
    path = tmp_path / f"mix_{len(list(tmp_path.glob('mix_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _groups(parquet: Path) -> Counter:
    return Counter(r["mix_group"] for r in pq.read_table(parquet, columns=["extra_info"]).column(0).to_pylist())


def test_allocate_largest_remainder_and_no_repeat_default():
    assert allocate([2, 2, 1], [8, 8, 8], None) == [8, 8, 4]
    assert allocate([2, 2, 1], [8, 8, 8], 40) == [16, 16, 8]
    assert allocate([1, 1, 1], [9, 9, 9], 10) == [4, 3, 3]
    assert allocate([1, 3], [100, 6], None) == [2, 6]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 100), min_size=1, max_size=6), st.data())
def test_allocate_properties(weights, data):
    avail = data.draw(st.lists(st.integers(1, 500), min_size=len(weights), max_size=len(weights)))
    total = data.draw(st.one_of(st.none(), st.integers(0, 2000)))
    counts = allocate(weights, avail, total)
    if total is not None:
        assert sum(counts) == total
        shares = [w / sum(weights) for w in weights]
        assert all(abs(c - total * p) < 1 for c, p in zip(counts, shares))
    else:
        assert all(c <= a for c, a in zip(counts, avail))  # the default never repeats a row


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, repo_root):
    tmp = tmp_path_factory.mktemp("mix")
    cfg = _yaml(tmp, repo_root)
    rc = run_cli("mix", cfg, "--output", tmp / "a/train.parquet", "--no_progress")
    assert rc == 0
    return tmp, cfg


def test_realised_proportions_follow_weights(mixed, capsys):
    tmp, _ = mixed
    summary = json.loads((tmp / "a/train_summary.json").read_text())
    assert summary["rows"] == 20
    assert _groups(tmp / "a/train.parquet") == {"reports": 8, "meco": 8, "change": 4}
    by = {g["group"]: g for g in summary["groups"]}
    assert by["reports"]["realised_share"] == pytest.approx(0.4) == by["reports"]["target_share"]
    assert by["change"]["lines"] == 8  # num_used_data [0, 8]
    assert by["reports"]["rejected"] == 4 and summary["rejects_by_reason"] == {
        "unsupported for text-output RL: output image": 2, "no image": 2}
    rows = pq.read_table(tmp / "a/train.parquet").to_pylist()
    assert [r["extra_info"]["index"] for r in rows] == list(range(20))
    assert Counter(r["data_source"] for r in rows) == {"medrl/report": 12, "medrl/grounding": 4,
                                                        "medrl/change_grounding": 4}


def test_same_seed_same_parquet_other_seed_other_order(mixed):
    tmp, cfg = mixed
    mix(cfg, tmp / "b/train.parquet", progress=False)
    mix(cfg, tmp / "c/train.parquet", seed=1, progress=False)
    a, b, c = (pq.read_table(tmp / f"{d}/train.parquet") for d in "abc")
    assert a.equals(b)
    ids = [[(e["mix_group"], e["id"], e["turn"]) for e in t.column("extra_info").to_pylist()] for t in (a, c)]
    assert ids[0] != ids[1] and sorted(ids[0]) == sorted(ids[1])


def test_num_used_data_slices_lines(tmp_path, repo_root):
    cfg = _yaml(tmp_path, repo_root, change={"num_used_data": {"change": [2, 5]}, "weight": {"change": 1}},
                unimedvl=None, mecovqa=None)
    summary = mix(cfg, tmp_path / "m.parquet", progress=False)
    (g,) = summary["groups"]
    assert (g["lines"], g["rows_available"], g["rows_taken"]) == (3, 3, 3)
    ids = {r["id"] for r in pq.read_table(tmp_path / "m.parquet").column("extra_info").to_pylist()}
    assert ids == {"levir_cc_like-train-2", "levir_cc_like-train-3", "levir_cc_like-train-4"}


def test_total_repeats_and_no_repeat(tmp_path, repo_root):
    cfg = _yaml(tmp_path, repo_root)
    summary = mix(cfg, tmp_path / "big.parquet", total=40, progress=False)
    by = {g["group"]: g for g in summary["groups"]}
    assert by["meco"]["rows_taken"] == 16 and by["meco"]["repeated_rows"] == 8
    assert _groups(tmp_path / "big.parquet") == {"reports": 16, "meco": 16, "change": 8}
    with pytest.raises(MixError, match="repeats disallowed"):
        mix(cfg, tmp_path / "no.parquet", total=40, allow_repeat=False, progress=False)


def test_shuffle_lines_off_takes_the_first_rows(tmp_path, repo_root):
    cfg = _yaml(tmp_path, repo_root, change={"shuffle_lines": False, "num_used_data": {"change": [0, 0]}},
                unimedvl=None, mecovqa=None)
    mix(cfg, tmp_path / "m.parquet", total=3, progress=False)
    ids = {r["id"] for r in pq.read_table(tmp_path / "m.parquet").column("extra_info").to_pylist()}
    assert ids == {f"levir_cc_like-train-{i}" for i in range(3)}


def test_pixel_limits_apply_per_block(tmp_path, repo_root):
    from PIL import Image

    cfg = _yaml(tmp_path, repo_root, unimedvl={"vit_image_transform_args": {"max_pixels": 4096}},
                mecovqa=None, change=None)
    mix(cfg, tmp_path / "e.parquet", progress=False)
    for r in pq.read_table(tmp_path / "e.parquet").to_pylist():
        w, h = Image.open(io.BytesIO(r["images"][0]["bytes"])).size
        assert w * h <= 4096 < 96 * 96
    mix(cfg, tmp_path / "r.parquet", image_mode="ref", progress=False)
    assert {r["images"][0]["max_pixels"] for r in pq.read_table(tmp_path / "r.parquet").to_pylist()} == {4096}


def test_verl_parquet_groups_pass_through(tmp_path, repo_root, mixed):
    tmp, _ = mixed
    cfg = tmp_path / "v.yaml"
    cfg.write_text(yaml.safe_dump({"verl": {"dataset_names": {"old": [str(tmp / "a/train.parquet")]},
                                            "weight": {"old": 1}}}))
    summary = mix(cfg, tmp_path / "v.parquet", progress=False)
    assert summary["rows"] == 20 and _groups(tmp_path / "v.parquet") == {"old": 20}


@pytest.mark.parametrize("edit,message", [
    ({"unimedvl": {"weight": {"nope": 1}}}, "weight names group"),
    ({"unimedvl": {"num_used_data": {"reports": [5, 2]}}}, "end > start"),
    ({"unimedvl": {"num_used_data": {"reports": [0]}}}, r"\[start, end\]"),
    ({"unimedvl": {"dataset_names": {"reports": ["missing_ds"]}}}, "neither in dataset_info"),
    ({"unimedvl": {"weights": {"reports": 1}}}, "unknown key"),
    ({"unimedvl": {"weight": {"reports": -1}}}, "non-negative"),
    ({"mecovqa": {"format": "tiff"}}, "format 'tiff'"),
])
def test_yaml_errors_name_file_and_key(tmp_path, repo_root, edit, message):
    cfg = _yaml(tmp_path, repo_root, **edit)
    with pytest.raises(MixError, match=message) as exc:
        load_mix(cfg)
    assert str(cfg) in str(exc.value)


def test_mandatory_group_without_rows_fails(tmp_path, repo_root):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"main_task_type": "t", "message": []}) + "\n")
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump({"unimedvl": {"dataset_names": {"g": [str(bad)]}, "is_mandatory": True}}))
    with pytest.raises(MixError, match="produced no rows"):
        mix(cfg, tmp_path / "m.parquet", progress=False)
    (rej,) = [json.loads(x) for x in (tmp_path / "m_rejects.jsonl").read_text().splitlines()]
    assert "no conversations" in rej["reason"] or "no message" in rej["reason"]
    assert run_cli("mix", cfg, "--output", tmp_path / "m.parquet", "--no_progress") == 2


@pytest.mark.verl_load
def test_mixed_rows_load_in_verl_and_pass_check(mixed, tiny_model_dir):
    tmp, _ = mixed
    items = load_with_verl(tmp / "a/train.parquet", tiny_model_dir)
    assert Counter(n_images(i) for i in items) == {1: 16, 2: 4}
    check_clean(tmp / "a/train.parquet", tiny_model_dir)


def test_verl_parquet_in_the_other_image_mode_is_named(tmp_path, mixed):
    tmp, _ = mixed
    cfg = tmp_path / "v.yaml"
    cfg.write_text(yaml.safe_dump({"verl": {"dataset_names": {"old": [str(tmp / "a/train.parquet")]}}}))
    with pytest.raises(MixError, match=r"group 'old': a row of .*train.parquet does not fit"):
        mix(cfg, tmp_path / "v.parquet", image_mode="ref", progress=False)


def test_a_unimedvl_shaped_yaml_loads_as_is(tmp_path, repo_root):
    """The seed's block (class-name key, VAE and ViT transform args) with DATASET_INFO nested under the class."""
    jsonl = str(repo_root / "examples/unimedvl/unimedvl.jsonl")
    root = str(repo_root / "examples/unimedvl")
    (tmp_path / "cfg.yaml").write_text(f"""
dataset_info:
  CounterfactualMedicalIterableDataset_ver1:
    cxr_a: {{data_dir: {root}, jsonl_path: {jsonl}}}
    cxr_b: {{data_dir: {root}, jsonl_path: {jsonl}}}
CounterfactualMedicalIterableDataset_ver1:
  dataset_names:
    counterfactual_train: [cxr_a, cxr_b]
  image_transform_args: {{image_stride: 16, max_image_size: 1024, min_image_size: 512}}
  vit_image_transform_args: {{image_stride: 14, max_image_size: 980, min_image_size: 378, max_pixels: 2_007_040}}
  weight: {{counterfactual_train: 10}}
  num_used_data: {{counterfactual_train: [0, 0]}}
  is_mandatory: true
  shuffle_lines: true
  shuffle_seed: 42
""")
    (g,) = load_mix(tmp_path / "cfg.yaml")
    assert (g.format, g.weight, g.images.max_pixels, g.shuffle_seed) == ("unimedvl", 10.0, 2007040, 42)
    assert [d.path for d in g.datasets] == [jsonl, jsonl] and g.datasets[0].image_root == root
    summary = mix(tmp_path / "cfg.yaml", tmp_path / "m.parquet", progress=False)
    assert summary["groups"][0]["lines"] == 24 and summary["rows"] == 16  # both files, 8 rows each

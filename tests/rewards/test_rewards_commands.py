"""`medrl reward score` and `medrl reward explain` end to end through the CLI entry point."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medrl.cli import main


def test_score_jsonl_and_parquet(tmp_path, capsys):
    rows = [
        {"data_source": "medrl/grounding", "solution": "<think>a</think><answer>[0.1, 0.2, 0.5, 0.6]</answer>",
         "ground_truth": "[[0.1,0.2,0.5,0.6]]"},
        {"data_source": "medrl/grounding", "solution": "[0.3, 0.2, 0.5, 0.6]",
         "reward_model": {"ground_truth": "[[0.1,0.2,0.5,0.6]]"}},
        {"data_source": "medrl/vqa", "solution": "yes", "ground_truth": "yes"},
    ]
    src = tmp_path / "rollouts.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out, hist = tmp_path / "scores.jsonl", tmp_path / "h.png"
    assert main(["reward", "score", "--input", str(src), "--output", str(out), "--histogram", str(hist)]) == 0
    printed = capsys.readouterr().out
    assert "medrl/grounding" in printed and "medrl/vqa" in printed and "0.7250" in printed  # mean of 1.0 and 0.45
    assert hist.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    assert scores == pytest.approx([1.0, 0.45, 1.0])

    pq = tmp_path / "rollouts.parquet"
    pd.DataFrame([{"solution": r["solution"], "ground_truth": "[[0.1,0.2,0.5,0.6]]"} for r in rows[:2]]).to_parquet(pq)
    assert main(["reward", "score", "--reward", "iou", "--input", str(pq), "--data-source", "x"]) == 0
    assert (tmp_path / "rollouts.parquet.reward_hist.png").exists()


def test_score_errors_name_the_row(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"data_source": "medrl/vqa", "solution": "yes", "ground_truth": "yes"}\n{"solution": "x"}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl line 2: no ground_truth"):
        main(["reward", "score", "--input", str(src)])
    src.write_text('{"data_source": "other", "solution": "yes", "ground_truth": "yes"}\n')
    with pytest.raises(SystemExit, match=r"no route for data_source \['other'\]"):
        main(["reward", "score", "--input", str(src)])


def test_explain_shows_boxes_matching_and_parts(capsys):
    assert main(["reward", "explain", "--solution", "<think>x</think><answer>[100, 200, 500, 600] [1, 1, 2, 2]</answer>",
                 "--ground-truth", "[[0.1,0.2,0.5,0.6]]", "--kwargs", '{"box_convention": "norm1000"}']) == 0
    out = capsys.readouterr().out
    assert "predicted #0 <-> true #0  IoU 1.0000" in out and "iou/n_pred" in out and "0.5000" in out
    assert main(["reward", "explain", "--reward", "enhanced", "--solution", "No abnormalities.",
                 "--ground-truth", "[]"]) == 0
    assert "enhanced/semantic" in capsys.readouterr().out


def test_reward_config_writes_seed_jobs(tmp_path, capsys, repo_root):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(repo_root / "custom_reward/reward_config.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "single_node_basic.sh: recipe grpo_grounding -> custom_reward/medrl_reward.py" in proc.stdout
    # The scripts run the recipe; the recipe names the reward file (printed above).
    assert "grpo_grounding" in (tmp_path / "single_node_basic.sh").read_text()
    assert "grpo_enhanced" in (tmp_path / "single_node_enhanced.sh").read_text()

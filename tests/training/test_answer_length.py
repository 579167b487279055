"""Reference answers against a stage's response length: cut rollouts are named before a run starts."""

from __future__ import annotations

import json

import pandas as pd

from medrl.training.answer_length import answer_fit, parquet_answer_fit, warn_cut_answers
from medrl.training.recipes import apply_overrides, load_recipe


def words(text: str) -> int:
    return len(text.split())


def test_answer_fit_counts_answers_over_the_limit_with_the_end_token():
    fit = answer_fit(["a b", "a b c", "", "a b c d e"], words, limit=3)
    # 2+1 fits, 3+1 and 5+1 do not; the empty answer is not a row with a reference.
    assert (fit.rows, fit.over, fit.longest, fit.example) == (3, 2, 6, "a b c")
    line = fit.warning("grpo train")
    assert "2 of 3 rows" in line and "data.max_response_length=3" in line and "at least 6" in line


def test_answer_fit_is_silent_when_every_answer_fits():
    fit = answer_fit(["a b", "a b c"], words, limit=4)
    assert fit.over == 0 and fit.longest == 4 and fit.warning("grpo train") == ""


def _vindr_rows(tmp_path):
    """The VinDr-like mix through the real converter: empty, 1-, 2- and 3-box answers."""
    from medrl.cli import main

    assert main(["prepare", "sample", "--grounding", "--mix", "vindr", "--n", "24", "--seed", "2",
                 "--out", str(tmp_path / "src")]) == 0
    assert main(["prepare", "grounding", str(tmp_path / "src" / "grounding.json"), "--split_name", "train",
                 "--output_dir", str(tmp_path / "data"), "--no_progress"]) == 0
    return tmp_path / "data" / "train.parquet"


def test_multi_box_answers_are_named_against_cpu_tiny_response_length(tmp_path, tiny_model_dir):
    train = _vindr_rows(tmp_path)
    df = pd.read_parquet(train)
    multi = sum(len(json.loads(r["ground_truth"])) >= 2 for r in df["reward_model"])
    assert multi > 0
    recipe = load_recipe("cpu_tiny")
    limit = recipe.stage("grpo").overrides["data.max_response_length"]
    fit = parquet_answer_fit(str(train), str(tiny_model_dir), limit)
    # Every 2- and 3-box answer is over the limit (a box is about 20 tokens), no 0- or 1-box answer is.
    assert fit.rows == len(df) and fit.over == multi and fit.longest > limit
    lines: list[str] = []
    recipe = apply_overrides(recipe, [f"data.train={train}", f"data.val={train}"])
    assert len(warn_cut_answers(recipe, str(tiny_model_dir), lines.append)) == 2  # train and val
    assert all(f"{multi} of {len(df)} rows" in line for line in lines)
    roomy = apply_overrides(recipe, [f"grpo.data.max_response_length={fit.longest}"])
    assert warn_cut_answers(roomy, str(tiny_model_dir), lines.append) == []


def test_a_tokenizer_that_cannot_load_is_a_note_not_a_failure(tmp_path):
    train = tmp_path / "train.parquet"
    pd.DataFrame({"extra_info": [{"answer": "[0.1, 0.2, 0.3, 0.4]"}]}).to_parquet(train)
    recipe = apply_overrides(load_recipe("cpu_tiny"), [f"data.train={train}"])
    lines: list[str] = []
    assert warn_cut_answers(recipe, str(tmp_path / "no-model"), lines.append) == []
    assert lines and "not checked" in lines[0]

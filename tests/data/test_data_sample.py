"""The generated grounding sets: one finding per image, or a VinDr-like mix, and what the converter reads back."""

from __future__ import annotations

import collections
import json
import random

import pandas as pd
import pytest

from medrl.boxes import truth_boxes_in_text
from medrl.data.sample import NO_FINDING, OPEN_QUESTIONS, findings_count, grounding_set_records
from medrl.no_finding import states_no_finding


def test_vindr_mix_draws_about_half_without_finding_and_one_to_three_otherwise():
    prng = random.Random(0)
    counts = collections.Counter(findings_count("vindr", prng) for _ in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert counts[0] / 4000 == pytest.approx(0.5, abs=0.03)
    assert all(counts[k] / 4000 == pytest.approx(1 / 6, abs=0.03) for k in (1, 2, 3))
    assert {findings_count("one", prng) for _ in range(50)} == {1}


def test_vindr_set_answers_state_no_finding_or_give_every_box(tmp_path):
    recs = grounding_set_records(30, tmp_path, seed=4, mix="vindr")
    sizes = collections.Counter()
    for rec in recs:
        question, answer = (c["value"] for c in rec["conversations"])
        assert question in OPEN_QUESTIONS  # the question never presupposes a finding
        boxes = truth_boxes_in_text(answer)
        sizes[len(boxes)] += 1
        if not boxes:
            assert answer == NO_FINDING and states_no_finding(answer)
        assert (tmp_path / rec["image"]).is_file()
    assert sizes[0] > 0 and sum(sizes[k] for k in (2, 3)) > 0 and max(sizes) <= 3


def test_one_finding_set_names_its_finding_and_gives_one_box(tmp_path):
    for rec in grounding_set_records(10, tmp_path, seed=1):
        question, answer = (c["value"] for c in rec["conversations"])
        assert len(truth_boxes_in_text(answer)) == 1 and answer.startswith("[")
        assert question not in OPEN_QUESTIONS
    with pytest.raises(ValueError, match="mix must be one of"):
        grounding_set_records(1, tmp_path, mix="mimic")


def test_prepare_reads_the_mix_back_as_empty_and_multi_box_truths(tmp_path):
    from medrl.cli import main

    assert main(["prepare", "sample", "--grounding", "--mix", "vindr", "--n", "24", "--seed", "2",
                 "--out", str(tmp_path / "src")]) == 0
    assert main(["prepare", "grounding", str(tmp_path / "src" / "grounding.json"), "--split_name", "train",
                 "--output_dir", str(tmp_path / "data"), "--no_progress"]) == 0
    df = pd.read_parquet(tmp_path / "data" / "train.parquet")
    sizes = collections.Counter(len(json.loads(r["ground_truth"])) for r in df["reward_model"])
    assert len(df) == 24 and sizes[0] > 0 and sum(sizes[k] for k in (1, 2, 3)) == 24 - sizes[0]

"""The one JSON Lines reader (medrl.jsonl) and the readers that use it."""

from __future__ import annotations

import pytest

from medrl import jsonl


def test_values_in_order_blank_lines_and_bom_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n  \n[2]\n"three"\n')
    assert jsonl.read(path) == [{"a": 1}, [2], "three"]
    assert [n for n, _ in jsonl.lines(path)] == [1, 4, 5]


def test_a_bad_line_names_the_file_and_line_unless_skipped(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "te')  # torn by a crash
    with pytest.raises(ValueError, match=r"log.jsonl:3: not a JSON line"):
        jsonl.read(path)
    assert [v["key"] for _, v in jsonl.lines(path, skip_bad=True)] == ["a", "b"]


def test_callers_use_it(tmp_path):
    """Reward score input, the generation log and verl's metrics file: one reading, each caller's own error."""
    from medrl.evaluation.generate import GenerationLog
    from medrl.rewards.rollout_files import read_rows
    from medrl.training.learning import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "data": {"x": 1}}\n{"key": "k", "text": "t"}\n{oops\n')
    with pytest.raises(SystemExit, match=r"medrl reward score: .*metrics.jsonl:3: not a JSON line"):
        list(read_rows(str(path)))
    assert list(GenerationLog(path).read()) == ["k"]
    path.write_text('{"step": 1, "data": {"x": 1}}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics(tmp_path)

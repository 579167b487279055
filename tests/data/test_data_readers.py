"""Readers stream records and turn a broken file into one counted reject with its offset."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medrl.data import rejects
from medrl.data.readers import SourceRecord, detect_format, read_records


def _records(n):
    return [{"id": f"r{i}", "image": f"img{i}.png",
             "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(n)]


def test_json_array_streams_every_record_with_position(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_records(5), indent=1))
    items = list(read_records(path))
    assert [type(i) for i in items] == [SourceRecord] * 5
    assert [i.position for i in items] == [0, 1, 2, 3, 4]
    assert items[3].data["id"] == "r3"
    assert items[4].data == _records(5)[4]  # the record as written, nothing added or lost


def test_json_numbers_are_plain_floats(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"id": "a", "w": 0.25, "n": 3}]')
    (item,) = read_records(path)
    assert type(item.data["w"]) is float and item.data["w"] == 0.25


def test_truncated_json_yields_records_before_the_break_then_one_reject(tmp_path):
    text = json.dumps(_records(4))
    cut = text.index('"id": "r3"') + 5  # break inside the fourth record
    path = tmp_path / "cut.json"
    path.write_text(text[:cut])
    items = list(read_records(path))
    good = [i for i in items if isinstance(i, SourceRecord)]
    bad = [i for i in items if isinstance(i, rejects.Reject)]
    assert [g.data["id"] for g in good] == ["r0", "r1", "r2"]
    assert len(bad) == 1 and items[-1] is bad[0]
    assert bad[0].reason == rejects.INVALID_JSON
    assert bad[0].source == str(path) and str(path) in bad[0].detail
    assert bad[0].offset == len(text[:cut].encode())  # truncation: the break is the end of the file
    assert bad[0].position == 3


def test_invalid_json_in_the_middle_names_an_offset_within_the_file(tmp_path):
    text = json.dumps(_records(3)).replace('"id": "r2"', '"id": r2')
    path = tmp_path / "bad.json"
    path.write_text(text)
    items = list(read_records(path))
    assert sum(isinstance(i, SourceRecord) for i in items) == 2
    (bad,) = [i for i in items if isinstance(i, rejects.Reject)]
    assert 0 < bad.offset <= len(text)


def test_top_level_object_is_a_reject_not_zero_records(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"data": _records(2)}, indent=2))
    (bad,) = list(read_records(path))
    assert isinstance(bad, rejects.Reject) and "not an array" in bad.detail


def test_jsonl_bad_line_is_one_reject_with_exact_offset_and_later_lines_survive(tmp_path):
    lines = [json.dumps(r) for r in _records(3)]
    lines.insert(1, '{"id": "broken", ')
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items = list(read_records(path))
    assert [i.data["id"] for i in items if isinstance(i, SourceRecord)] == ["r0", "r1", "r2"]
    (bad,) = [i for i in items if isinstance(i, rejects.Reject)]
    assert bad.offset == len(lines[0]) + 1
    assert "line 2" in bad.detail


def test_json_file_with_one_object_per_line_is_read_as_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("\n".join(json.dumps(r) for r in _records(2)))
    assert detect_format(path) == "jsonl"
    assert len(list(read_records(path))) == 2


def test_parquet_reader_reads_llava_rows_batch_by_batch(tmp_path):
    recs = _records(2500)
    path = tmp_path / "llava.parquet"
    pq.write_table(pa.Table.from_pylist(recs), path, row_group_size=700)
    items = list(read_records(path))
    assert len(items) == 2500 and items[2499].position == 2499
    assert items[1234].data["conversations"][1]["value"] == "a1234"


def test_unknown_format_is_an_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="unknown input format"):
        read_records(path, "xml")

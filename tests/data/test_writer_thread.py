"""RowGroupWriter encodes row groups in a thread (issue 22): its errors still reach the caller, unpublished."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medrl.data.writer import RowGroupWriter

SCHEMA = pa.schema([("x", pa.int64())])


def test_rows_and_row_groups_as_written(tmp_path):
    path = tmp_path / "t.parquet"
    with RowGroupWriter(path, SCHEMA, row_group_size=3) as w:
        for i in range(10):
            w.write({"x": i})
    f = pq.ParquetFile(path)
    assert [f.metadata.row_group(k).num_rows for k in range(f.metadata.num_row_groups)] == [3, 3, 3, 1]
    assert f.read().column("x").to_pylist() == list(range(10))


@pytest.mark.parametrize("rows", [2, 7])  # the failure in the last row group, or in an earlier one
def test_a_failed_write_in_the_thread_raises_and_publishes_nothing(tmp_path, monkeypatch, rows):
    def fail(self, table, row_group_size=None):
        raise OSError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", fail)
    path = tmp_path / "t.parquet"
    with pytest.raises(OSError, match="disk full"):
        with RowGroupWriter(path, SCHEMA, row_group_size=3) as w:
            for i in range(rows):
                w.write({"x": i})
    assert list(tmp_path.iterdir()) == []

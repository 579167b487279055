"""Rows to an Arrow table column by column: the table `pa.Table.from_pylist` builds, at a fraction of its cost.

`from_pylist` converts row after row, each nested dict through pyarrow's generic
converter. Here every leaf column is gathered with one list comprehension and converted
by `pa.array` in one call, and structs and lists are assembled from their children
(`StructArray.from_arrays`, `ListArray.from_arrays`). Missing keys and None values are
nulls, extra keys are ignored, as in `from_pylist` (tests/data/test_data_columns.py
compares both on every schema the converters write).
"""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa


def column(values: Sequence[Any], typ: pa.DataType) -> pa.Array:
    """One Arrow array of `typ` from Python values (dicts for structs, lists for lists, None for null)."""
    if pa.types.is_struct(typ):
        mask = None
        if any(v is None for v in values):
            mask = pa.array([v is None for v in values], pa.bool_())
            values = [{} if v is None else v for v in values]
        fields = [typ.field(k) for k in range(typ.num_fields)]
        children = [column([v.get(f.name) for v in values], f.type) for f in fields]
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    if pa.types.is_list(typ):
        offsets, flat, nulls, end = [0], [], [], 0
        for v in values:
            if v is None:
                nulls.append(True)
            else:
                flat.extend(v)
                end += len(v)
                nulls.append(False)
            offsets.append(end)
        mask = pa.array(nulls, pa.bool_()) if any(nulls) else None
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), column(flat, typ.value_type), type=typ,
                                        mask=mask)
    return pa.array(values, type=typ)


def rows_table(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    """`pa.Table.from_pylist(rows, schema=schema)`, built column by column."""
    try:
        return pa.Table.from_arrays([column([r.get(f.name) for r in rows], f.type) for f in schema], schema=schema)
    except (AttributeError, TypeError, pa.ArrowException):
        # A value of the wrong shape: from_pylist raises its own error for it (or accepts what it accepts).
        return pa.Table.from_pylist(list(rows), schema=schema)

"""JSON Lines: the one reader for the files medrl and verl write (one JSON value a line).

Blank lines are skipped and a UTF-8 byte-order mark is dropped. A line that is not JSON
raises ValueError naming the file and line, unless the caller reads an append-only log whose
last line may be torn by a crash (`skip_bad`). Converting users' data is another contract
(every bad line becomes a counted reject with its byte offset): `medrl.data.readers`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator


def lines(path: str | os.PathLike, skip_bad: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of `path`; see the module rule for bad lines."""
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                if not skip_bad:
                    raise ValueError(f"{os.fspath(path)}:{n}: not a JSON line ({exc.msg})") from exc


def read(path: str | os.PathLike) -> list[Any]:
    """Every value of a JSON Lines file, in order (ValueError naming the file and line on a bad one)."""
    return [value for _, value in lines(path)]

"""Reading rollout and data files for the reward tools (`medrl reward score`, `explain`, `check`).

JSON Lines or parquet; a row holds the answer (`solution` / `solution_str` / `response`), the
ground truth (`ground_truth` or verl's `reward_model.ground_truth`), `data_source` and
`extra_info`. A bad row stops the command with a message naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from medrl import jsonl

SOLUTION_KEYS = ("solution", "solution_str", "response")


def read_rows(path: str) -> Iterator[tuple[str, dict]]:
    """(where, record) for each row of a JSONL or parquet file."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"medrl reward score: input {path} does not exist")
    if p.suffix == ".parquet":
        import pandas as pd

        for i, rec in enumerate(pd.read_parquet(p).to_dict("records")):
            yield f"{path} row {i}", rec
        return
    try:
        for n, rec in jsonl.lines(p):
            if not isinstance(rec, dict):
                raise SystemExit(f"medrl reward score: {path} line {n}: expected a JSON object")
            yield f"{path} line {n}", rec
    except ValueError as exc:
        raise SystemExit(f"medrl reward score: {exc}")


def row_fields(where: str, rec: dict, default_source: str | None) -> tuple[str, str, Any, dict]:
    """(data_source, solution, ground_truth, extra_info) of a row; SystemExit naming the row when one is missing."""
    sol = next((rec[k] for k in SOLUTION_KEYS if k in rec), None)
    if not isinstance(sol, str):
        raise SystemExit(f"medrl reward score: {where}: no solution text (one of {SOLUTION_KEYS})")
    if "ground_truth" in rec:
        gt = rec["ground_truth"]
    elif isinstance(rec.get("reward_model"), dict) and "ground_truth" in rec["reward_model"]:
        gt = rec["reward_model"]["ground_truth"]
    else:
        raise SystemExit(f"medrl reward score: {where}: no ground_truth (or reward_model.ground_truth)")
    ds = rec.get("data_source") or default_source
    if not ds:
        raise SystemExit(f"medrl reward score: {where}: no data_source; pass --data-source")
    info = rec.get("extra_info")
    return str(ds), sol, gt, dict(info) if isinstance(info, dict) else {}

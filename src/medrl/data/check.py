"""`medrl check`: preflight a verl RL parquet before it reaches a GPU job.

Each row is checked for the problems that otherwise surface deep inside a run:
`<image>` count vs image count, unreadable images, ground truths that do not
parse, data sources without a reward route, rows with and without images mixed,
and (with the model's processor) the exact prompt length against
`data.max_prompt_length`.

Two ways to run it. The default (`check_fast`) reads images' headers and counts
tokens with the fast counter in worker processes, then loads a seeded sample of
rows (and every row near the limit) through verl's `RLHFDataset` and fails if any
count differs. `full=True` (`--full`) decodes every image and loads every row
through verl, as the first version did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medrl.data.check_rules import (  # noqa: F401  (re-exported: the names callers and tests use)
    P_COLUMNS,
    P_DATASET,
    P_IMAGE,
    P_LENGTH,
    P_MISMATCH,
    P_MIXED,
    P_PLACEHOLDER,
    P_ROUTE,
    P_TRUTH,
    MixedRows,
    ProblemLog,
    image_problem,
    missing_columns,
    route_checker,
    row_id,
    row_problems,
    truth_problem,
    verl_load,
)

def check_file(path: str | Path, processor: str | None = None, max_prompt_length: int | None = None,
               image_key: str = "images", prompt_key: str = "prompt", show: int = 10,
               reward_spec: Any = None, progress: bool = True, full: bool = False, **fast) -> dict:
    """Check one parquet; returns {"file", "rows", "problems": {name: {count, rows, ids, example}}, "notes", ...}.

    `full`: decode every image and load every row through verl (slow). Otherwise the fast
    path runs; `fast` holds its options (verify, margin, seed, workers: see check_fast).
    """
    if not full:
        from medrl.data.check_fast import check_fast

        return check_fast(path, processor=processor, max_prompt_length=max_prompt_length, image_key=image_key,
                          prompt_key=prompt_key, show=show, reward_spec=reward_spec, progress=progress, **fast)
    import pyarrow.parquet as pq
    from tqdm import tqdm

    path = Path(path)
    log = ProblemLog(show)
    notes: list[str] = []
    pf = pq.ParquetFile(path)
    n_rows = pf.metadata.num_rows
    for why in missing_columns(pf.schema_arrow.names, prompt_key):
        log.flag(P_COLUMNS, -1, None, why)
    route_ok, note = route_checker(reward_spec)
    if note:
        notes.append(note)
    routes: dict[str, bool] = {}
    mixed = MixedRows(show)
    row = 0
    bar = tqdm(total=n_rows, desc="check rows", unit=" row", disable=not progress, mininterval=1.0)
    for batch in pf.iter_batches(batch_size=256):
        for rec in batch.to_pylist():
            rid = row_id(rec)
            mixed.add(bool(rec.get(image_key)), row, rid)
            for name, detail in row_problems(rec, image_key, prompt_key, image_problem, route_ok, routes):
                log.flag(name, row, rid, detail)
            row += 1
            bar.update(1)
    bar.close()
    mixed.flag(log)

    if processor:
        _check_with_verl(path, processor, max_prompt_length, image_key, prompt_key, log.flag, progress)
    else:
        notes.append("no --processor: rows not loaded through verl's RLHFDataset, token length not checked")
    return {"file": str(path), "rows": n_rows, "problems": log.problems, "notes": notes, "routes": routes,
            "mode": "full"}


def _check_with_verl(path: Path, processor_path: str, max_prompt_length: int | None, image_key: str,
                     prompt_key: str, flag, progress: bool) -> None:
    """Load every row through verl's RLHFDataset and measure its exact prompt length."""
    for i, rid, n in verl_load(path, processor_path, image_key, prompt_key, progress):
        if isinstance(n, str):
            flag(P_DATASET, i, rid, n)
        elif max_prompt_length and n > max_prompt_length:
            flag(P_LENGTH, i, rid, f"{n} tokens > {max_prompt_length}")


def print_report(report: dict, as_json: bool = False) -> None:
    """Print the check report as a rich table (or JSON)."""
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for note in report["notes"]:
        console.print(f"[yellow]note[/]: {note}")
    lengths, proof = report.get("lengths"), report.get("verified")
    if lengths and lengths.get("counted"):
        console.print(f"prompt tokens: max {lengths['max']} (row {lengths['max_row']}), 50% below "
                      f"{lengths['p50_below']}, 99% below {lengths['p99_below']} ({lengths['counted']} rows counted)")
    if proof is not None:
        style = "red" if proof["mismatches"] else "green"
        console.print(f"[{style}]proven through verl's RLHFDataset[/]: {proof['rows']} rows ({proof['sample']} "
                      f"sampled, {proof['near_limit']} near the limit, {proof['fast_path_skipped']} beyond the "
                      f"fast path), {proof['mismatches']} count(s) differ")
    if not report["problems"]:
        console.print(f"[bold green]OK[/]: {report['file']}: {report['rows']} rows, no problem found")
        return
    t = Table(title=f"medrl check {report['file']} ({report['rows']} rows)", title_style="bold red")
    t.add_column("problem", no_wrap=True)
    t.add_column("rows", justify="right")
    t.add_column("which (row: id)")
    t.add_column("example")
    for name, p in report["problems"].items():
        which = ", ".join(f"{r}: {i}" for r, i in zip(p["rows"], p["ids"]))
        if p["count"] > len(p["rows"]):
            which += ", ..."
        t.add_row(name, str(p["count"]), which, p["example"])
    console.print(t)

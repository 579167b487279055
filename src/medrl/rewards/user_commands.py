"""`medrl reward new` (a reward file to edit) and `medrl reward check` (its contract, before training)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from medrl.rewards.contract import DEFAULT_MAX_MS, DEFAULT_TIMEOUT_S


def register(sub: argparse._SubParsersAction) -> None:
    """Add `new` and `check` to `medrl reward`."""
    n = sub.add_parser("new", help="write NAME.py (a reward with verl's signature) and test_NAME.py to edit")
    n.add_argument("name", help="reward name, a Python identifier (e.g. lesion)")
    n.add_argument("--dir", default=".", help="folder to write into, next to your code (default: here)")
    n.add_argument("--force", action="store_true", help="overwrite existing files")
    n.set_defaults(func=cmd_new)

    c = sub.add_parser("check", help="check a reward against the contract with adversarial model outputs")
    c.add_argument("target", help="FILE.py[:function], a reward name (iou, bleu, ...) or a spec (YAML path / JSON)")
    c.add_argument("--data", default=None, help="also call it with the rows of this parquet/JSONL (their ground "
                                                "truths, extra_info, and solutions when the file has them)")
    c.add_argument("--rows", type=int, default=20, help="rows of --data to use, spread over the file (default 20)")
    c.add_argument("--data-source", action="append", default=None,
                   help="data_source to call it with (repeatable; default: the spec's routes, else medrl/grounding)")
    c.add_argument("--ground-truth", action="append", default=None,
                   help="ground truth to use instead of the task's built-in ones (repeatable)")
    c.add_argument("--repeats", type=int, default=2, help="calls per input, to catch non-determinism (default 2)")
    c.add_argument("--max-ms", type=float, default=DEFAULT_MAX_MS,
                   help=f"budget for the median time per call (default {DEFAULT_MAX_MS:g} ms)")
    c.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"a call running longer counts as a hang (default {DEFAULT_TIMEOUT_S:g} s)")
    c.set_defaults(func=cmd_check)


def cmd_new(args: argparse.Namespace) -> int:
    """Write the template and say what to do next."""
    from medrl.rewards.template import write_template

    try:
        written = write_template(args.name, args.dir, args.force)
    except (ValueError, FileExistsError) as exc:
        print(f"medrl reward new: {exc}", file=sys.stderr)
        return 2
    reward, test = written
    print(f"wrote {reward} and {test}\nnext:\n  1. edit the rule in {reward} (and its cases in {test})\n"
          f"  2. pytest {test}\n  3. medrl reward check {reward} [--data train.parquet]\n"
          f"  4. add it to a reward spec: - {{path: {reward.name}, weight: 0.2}}  (path relative to the spec)\n"
          f"  5. medrl reward score --reward spec.yaml --input rollouts.jsonl")
    return 0


def data_rows(path: str, limit: int, default_source: str | None) -> list[dict]:
    """Up to `limit` rows of a data or rollouts file, spread evenly, as dicts for `probes_for`."""
    from medrl.rewards.rollout_files import SOLUTION_KEYS, read_rows

    records = list(read_rows(path))
    if not records:
        raise SystemExit(f"medrl reward check: {path} has no rows")
    step = max(1, len(records) // max(1, limit))
    rows = []
    for where, rec in records[::step][:limit]:
        gt = rec.get("ground_truth")
        if gt is None and isinstance(rec.get("reward_model"), dict):
            gt = rec["reward_model"].get("ground_truth")
        ds = rec.get("data_source") or default_source
        if gt is None or not ds:
            raise SystemExit(f"medrl reward check: {where}: needs data_source (or --data-source) and a ground truth "
                             "(ground_truth or reward_model.ground_truth)")
        info = rec.get("extra_info")
        rows.append({"name": where, "data_source": str(ds), "ground_truth": gt,
                     "extra_info": dict(info) if isinstance(info, dict) else {},
                     "solution": next((rec[k] for k in SOLUTION_KEYS if isinstance(rec.get(k), str)), None)})
    return rows


def cmd_check(args: argparse.Namespace) -> int:
    """Run the contract check; exit 1 on any violation."""
    from medrl.rewards.contract import run_check

    rows: Any = None
    if args.data:
        rows = data_rows(args.data, args.rows, (args.data_source or [None])[0])
    try:
        report = run_check(args.target, data_sources=args.data_source, rows=rows, ground_truths=args.ground_truth,
                           repeats=args.repeats, max_ms=args.max_ms, timeout_s=args.timeout)
    except ValueError as exc:  # the target does not load: missing file or function, bad signature, bad spec
        print(f"medrl reward check: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1

"""The benchmarks' progress lines: a wall-clock time, then what is happening."""

from __future__ import annotations

import time


def log(msg: str) -> None:
    """Print `msg` after the time of day, at once (a long run is read while it runs)."""
    print(time.strftime("%H:%M:%S"), msg, flush=True)

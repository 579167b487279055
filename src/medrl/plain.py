"""Plain Python values from what parquet, numpy and Hydra hand over: dicts, lists, str, numbers.

Rows read from parquet carry numpy arrays (ground truths, prompts, object arrays of arrays);
reward kwargs from Hydra arrive as OmegaConf DictConfig / ListConfig. Every reader turns
them into dicts with string keys and lists here, so one rule decides what a value is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def plain(obj: Any) -> Any:
    """`obj` with arrays (`.tolist()`), tuples and sequences as lists and mappings as dicts with str keys."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes, bytearray)):
        return [plain(v) for v in obj]
    return obj

"""Format reward: the reply is `<think>...</think>` then `<answer>...</answer>`, nothing else around them."""

from __future__ import annotations

import re
from typing import Any

from medrl.rewards.answer import MAX_REPLY_CHARS

KEYS = ("score", "format")

_FORMAT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.S)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_ok(text: str) -> bool:
    """True when `text` is exactly one think block followed by one non-empty answer block."""
    if not isinstance(text, str) or len(text) > MAX_REPLY_CHARS:
        return False
    # Exactly one of each tag: a second <answer> hidden inside the first is not the format.
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    m = _FORMAT_RE.fullmatch(text)
    return bool(m and m.group(2).strip())


def compute_score(data_source: Any, solution_str: str, ground_truth: Any = None, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """1.0 when the reply follows the think/answer format, else 0.0."""
    value = 1.0 if format_ok(solution_str) else 0.0
    return {"score": value, "format": value}

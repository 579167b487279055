"""Format reward: the reply is `<think>...</think>` then `<answer>...</answer>`, nothing else around them."""

from __future__ import annotations

from typing import Any

from medrl.rewards.answer import strict_parts

KEYS = ("score", "format")


def format_ok(text: str) -> bool:
    """True when `text` is exactly one think block followed by one non-empty answer block."""
    parts = strict_parts(text)
    return bool(parts and parts[1].strip())


def compute_score(data_source: Any, solution_str: str, ground_truth: Any = None, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """1.0 when the reply follows the think/answer format, else 0.0."""
    value = 1.0 if format_ok(solution_str) else 0.0
    return {"score": value, "format": value}

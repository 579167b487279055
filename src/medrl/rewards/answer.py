"""Finding the parts of a model's reply: the `<think>` reasoning and the answer section.

Rule (shared by every reward): the answer is the text inside the first
``<answer>...</answer>`` when present (an unclosed ``<answer>`` runs to the end),
else the text after the last ``</think>``, else the whole reply.
"""

from __future__ import annotations

import re

# Model output is untrusted and may be huge: every reward looks at this much at most.
MAX_REPLY_CHARS = 20_000

_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S | re.I)
_THINK_RE = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.S | re.I)
_THINK_END = "</think>"

def answer_section(text: str) -> tuple[str, str]:
    """Return (answer text, where it came from: "answer" | "after_think" | "whole")."""
    if not isinstance(text, str):
        return "", "whole"
    text = text[:MAX_REPLY_CHARS]
    m = _ANSWER_RE.search(text)
    if m:
        return m.group(1).strip(), "answer"
    cut = text.rfind(_THINK_END)
    if cut < 0 and "</" in text:  # rare upper-case tags
        cut = text.lower().rfind(_THINK_END)
    if cut >= 0:
        return text[cut + len(_THINK_END):].strip(), "after_think"
    return text.strip(), "whole"


def extract_answer(text: str) -> str:
    """The answer section of a reply (see the module rule)."""
    return answer_section(text)[0]


def extract_think(text: str) -> str:
    """The reasoning inside the first `<think>...</think>`, or "" when there is none."""
    if not isinstance(text, str) or "<think>" not in text[:MAX_REPLY_CHARS].lower():
        return ""
    m = _THINK_RE.search(text[:MAX_REPLY_CHARS])
    return m.group(1).strip() if m else ""

"""Finding the parts of a model's reply: the `<think>` reasoning and the answer section.

Rule (shared by every reward): the answer is the text inside the first
``<answer>...</answer>`` when present (an unclosed ``<answer>`` runs to the end),
else the text after the last ``</think>``, else the whole reply.

The strict layout (the format reward) is one think block then one answer block, each tag
once, nothing else around them; `reply` writes it (SFT targets), `strict_parts` reads it.
"""

from __future__ import annotations

import re

# Model output is untrusted and may be huge: every reward looks at this much at most.
MAX_REPLY_CHARS = 20_000

_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S | re.I)
_THINK_RE = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.S | re.I)
_THINK_END = "</think>"
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_LAYOUT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.S)


def reply(think: str, answer: str) -> str:
    """The reply in the strict layout: `<think>think</think><answer>answer</answer>`."""
    return f"{TAGS[0]}{think}{TAGS[1]}{TAGS[2]}{answer}{TAGS[3]}"


def strict_parts(text: str) -> tuple[str, str] | None:
    """(think, answer) when `text` is exactly the strict layout (see the module rule), else None."""
    if not isinstance(text, str) or len(text) > MAX_REPLY_CHARS:
        return None
    # Exactly one of each tag: a second <answer> hidden inside the first is not the layout.
    if any(text.count(tag) != 1 for tag in TAGS):
        return None
    m = _LAYOUT_RE.fullmatch(text)
    return (m.group(1), m.group(2)) if m else None

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

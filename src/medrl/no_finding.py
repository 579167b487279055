"""Answers that say there is nothing to box: one rule for the converters and the rewards.

A grounding answer without a box is a "no finding" truth for the converters (else the
record is rejected) and earns the no-finding credit from the rewards when the truth has
no box. Both sides call `states_no_finding`, so a converted SFT target that says "no
finding" is exactly an answer the reward credits. Saying that nothing changed counts
too: change grounding writes "No change." for a pair without a change.

Each phrase is a case-insensitive pattern with an example it must match (checked by the
tests, which also feed every example through the converter and the reward).
"""

from __future__ import annotations

import re

# Model output is untrusted and may be huge: look at this much at most.
MAX_TEXT_CHARS = 20_000

NO_FINDING_PHRASES: tuple[tuple[str, str], ...] = (
    (r"\bno\s+(?:\w+\s+){0,2}(?:findings?|abnormal\w*|lesions?|patholog\w*|disease)\b",
     "No abnormalities or lesions are detected on this Chest X-ray."),
    (r"\bno\s+(?:\w+\s+){0,2}evidence\s+of\b", "No evidence of pneumothorax."),
    (r"\bno\s+acute\s+\w+", "No acute cardiopulmonary process."),
    (r"\bno\s+(?:significant|definite|focal|obvious|visible|discrete|radiographic)\s+\w+", "No focal consolidation."),
    (r"\bnot\s+(?:\w+\s+)?(?:detected|seen|present|identified|visible|found)\b", "Nodule not seen."),
    (r"\bunremarkable\b", "Unremarkable."),
    (r"\bnormal\s+(?:chest|study|examination|exam|radiograph|x-?ray|scan|image)\b", "Normal chest radiograph."),
    (r"\bwithin\s+normal\s+limits\b", "Within normal limits."),
    (r"\bnothing\s+(?:abnormal|to\s+(?:report|locate|box))\b", "Nothing abnormal."),
    (r"\bno\s+(?:bounding\s+)?box(?:es)?\b", "No boxes."),
    (r"\bnone\s+(?:found|detected|seen|present|identified)\b", "None found."),
    (r"\bno\s+(?:\w+\s+)?changes?\b", "No change."),
    (r"\bnothing\s+(?:has\s+)?changed\b", "Nothing has changed."),
)

_NO_FINDING_RE = re.compile("|".join(f"(?:{p})" for p, _ in NO_FINDING_PHRASES), re.I)


def states_no_finding(text: str) -> bool:
    """Whether the text says that there is nothing to box (see `NO_FINDING_PHRASES`)."""
    return bool(isinstance(text, str) and _NO_FINDING_RE.search(text[:MAX_TEXT_CHARS]))

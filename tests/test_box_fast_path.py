"""find_box_candidates' plain-box fast path finds exactly what the general regexes find (issue 22)."""

from __future__ import annotations

import random

from medrl import boxes
from medrl.boxes import find_box_candidates

PIECES = ("[", "]", "(", ")", ", ", ",", " ", "0.12", "3", "45.", ".5", "1e3", "nan", "-0.2", "x", "\n",
          "[0.10, 0.20, 0.30, 0.40]", "[12, 5, 120, 40]", "[0.1, 0.2, 0.3]", "[[0.1, 0.2, 0.3, 0.4]]",
          "[0.1,0.2,0.3,0.4]", "[ 0.1, 0.2, 0.3, 0.4 ]", "[0.1, 0.2, 0.3, 0.4,]", "(0.1, 0.2), (0.3, 0.4)",
          "[" + "1" * 31 + ", 2, 3, 4]", "[1.5, 2.25, 3, 4]")


def _general(text: str, limit: int) -> list:
    """The candidates by the general regexes alone (the fast path switched off)."""
    saved = boxes._PLAIN_BOX_RE
    boxes._PLAIN_BOX_RE = boxes.re.compile(r"(?!)")  # never matches: every text with "[" takes the general path
    try:
        return find_box_candidates(text, limit)
    finally:
        boxes._PLAIN_BOX_RE = saved


def test_fast_path_equals_general_regexes():
    rng = random.Random(0)
    texts = ["A nodule at [0.12, 0.05, 0.42, 0.30] and [0.52, 0.55, 0.67, 0.75].", "No box here.", "[]", "[1, 2, 3, 4]"]
    texts += ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))) for _ in range(5000)]
    fast_taken = 0
    for text in texts:
        for limit in (1, 64, 10_000):
            got = find_box_candidates(text, limit)
            assert got == _general(text, limit), text
        fast_taken += "(" not in text and text.count("[") == len(boxes._PLAIN_BOX_RE.findall(text))
    assert fast_taken > 500  # the fast path itself was exercised

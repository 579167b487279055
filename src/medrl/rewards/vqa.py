"""Closed-form VQA accuracy: yes/no, option letter, or normalised exact match (rows of `medrl/vqa`).

The truth decides the kind of question:
- yes/no truth (one that starts with yes/no, e.g. "Yes, there is an effusion."): the answer's
  first yes/no word (``yes``, ``no``, ``true``, ``false``, ...) must agree;
- option-letter truth (``A``..``J``, also ``(B)`` or ``B.``): the answer's chosen letter
  (``B``, ``(B)``, ``B.``, ``B)``, ``answer: B``, ``option B``) must agree;
- otherwise the normalised truth (lower case, no punctuation, no articles) must appear as
  consecutive words of the normalised answer, and the answer may have at most
  `EXTRA_WORDS` (5) words more than the truth, so that listing everything does not pay
  (a truth made only of articles keeps them);
A list of acceptable truths scores 1 when any matches. Range [0, 1].
"""

from __future__ import annotations

import json
import re
from typing import Any

from medrl.rewards.answer import answer_section
from medrl.rewards.bleu import normalize_text

KEYS = ("score", "acc", "parsed")

_YES = {"yes", "true", "present", "positive"}
_NO = {"no", "false", "absent", "negative"}
_LETTER_TRUTH_RE = re.compile(r"^\(?([A-Ja-j])[\).:]?$")
# Upper-case only outside "answer/option/choice X", so the pronoun "I" or the article "a" is no choice.
_LETTER_ANSWER_RE = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is)?\s*[:=]?\s*\(?([A-Ja-j])\b|^\s*\(?([A-J])(?:[\).:]|\s*$)|\(([A-J])\)")
_ARTICLES = {"a", "an", "the"}
EXTRA_WORDS = 5


def truths(ground_truth: Any) -> list[str]:
    """Acceptable answers from a string, a JSON list string, a list, or a numpy array."""
    if isinstance(ground_truth, dict):
        ground_truth = ground_truth.get("ground_truth", ground_truth.get("answer", ""))
    if isinstance(ground_truth, bytes):
        ground_truth = ground_truth.decode("utf-8", "replace")
    if isinstance(ground_truth, str):
        s = ground_truth.strip()
        if s.startswith("["):
            try:
                ground_truth = json.loads(s)
            except (ValueError, RecursionError):
                return [s]
        else:
            return [s]
    if hasattr(ground_truth, "tolist"):
        ground_truth = ground_truth.tolist()
    if isinstance(ground_truth, (list, tuple)):
        return [str(t).strip() for t in ground_truth[:64] if t is not None]
    return [] if ground_truth is None else [str(ground_truth)]


def _words(text: str) -> list[str]:
    return [w for w in normalize_text(text) if w not in _ARTICLES]


def yes_no(text: str) -> str | None:
    """'yes', 'no', or None: the first yes/no word of the text."""
    for w in normalize_text(text[:2000]):
        if w in _YES:
            return "yes"
        if w in _NO:
            return "no"
    return None


def option_letter(text: str) -> str | None:
    """The option letter an answer chooses, upper-case, or None."""
    m = _LETTER_ANSWER_RE.search(text[:2000])
    if not m:
        return None
    return (m.group(1) or m.group(2) or m.group(3)).upper()


def match_one(answer: str, truth: str) -> tuple[bool, bool]:
    """(correct, parsed) of one answer against one acceptable truth."""
    t_words = _words(truth)
    if t_words and (t_words[0] in _YES or t_words[0] in _NO):
        got = yes_no(answer)
        return got == ("yes" if t_words[0] in _YES else "no"), got is not None
    m = _LETTER_TRUTH_RE.match(truth.strip())
    if m:
        got = option_letter(answer)
        return got == m.group(1).upper(), got is not None
    a_words = _words(answer)
    if not t_words:
        # A truth made only of articles ("the", "A" read as a word) keeps them, or it could never match.
        t_words, a_words = normalize_text(truth), normalize_text(answer)
        if not t_words:
            return False, bool(a_words)
    n = len(t_words)
    ok = len(a_words) <= n + EXTRA_WORDS and any(a_words[i:i + n] == t_words for i in range(len(a_words) - n + 1))
    return ok, bool(a_words)


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """1.0 when the answer section matches an acceptable truth, else 0.0 (see the module rule)."""
    answer, _ = answer_section(solution_str)
    correct = parsed = False
    for truth in truths(ground_truth):
        ok, got = match_one(answer, truth)
        correct, parsed = correct or ok, parsed or got
        if correct:
            break
    value = 1.0 if correct else 0.0
    return {"score": value, "acc": value, "parsed": 1.0 if parsed else 0.0}

"""BLEU reward for report writing: sentence BLEU-4 of the answer section against the reference report.

Both texts are lower-cased, punctuation becomes spaces, and the result is split
on whitespace. The value equals nltk's
``sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1)``
(checked by the tests); it is computed here with plain counters because nltk's
Fraction arithmetic is the slow part. Identical normalised texts score 1.
Range [0, 1].
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

from medrl.rewards.answer import MAX_REPLY_CHARS, answer_section

KEYS = ("score", "bleu", "hyp_len", "ref_len")
EPSILON = 0.1  # nltk SmoothingFunction.method1's default epsilon
MAX_TOKENS = 2_000  # a report is a few hundred words; bound the work on runaway output

_PUNCT_RE = re.compile(r"[^\w\s]|_", re.UNICODE)


def normalize_text(text: str) -> list[str]:
    """Lower-case, replace punctuation by spaces, and split into words."""
    if not isinstance(text, str):
        return []
    text = unicodedata.normalize("NFKC", text[:MAX_REPLY_CHARS]).lower()
    return _PUNCT_RE.sub(" ", text).split()[:MAX_TOKENS]


def _ngram_counts(tokens: tuple[str, ...], n: int) -> Counter:
    return Counter(zip(*(tokens[i:] for i in range(n))))


@lru_cache(maxsize=8192)
def _reference(text: str) -> tuple[tuple[str, ...], tuple[Counter, ...]]:
    tokens = tuple(normalize_text(text))
    return tokens, tuple(_ngram_counts(tokens, n) for n in range(1, 5))


def sentence_bleu4(hyp: list[str] | tuple[str, ...], ref: tuple[str, ...],
                   ref_counts: tuple[Counter, ...] | None = None) -> float:
    """BLEU-4 with uniform weights and method-1 smoothing, equal to nltk's sentence_bleu."""
    hyp = tuple(hyp)
    if ref_counts is None:
        ref_counts = tuple(_ngram_counts(ref, n) for n in range(1, 5))
    log_sum = 0.0
    for n in range(1, 5):
        counts = _ngram_counts(hyp, n) if len(hyp) >= n else Counter()
        ref_n = ref_counts[n - 1]
        matched = sum(min(c, ref_n[g]) for g, c in counts.items() if g in ref_n)
        total = max(1, sum(counts.values()))
        if n == 1 and matched == 0:
            return 0.0  # nltk: no unigram overlap means BLEU 0, smoothing or not
        log_sum += 0.25 * math.log((matched if matched else EPSILON) / total)
    hyp_len, ref_len = len(hyp), len(ref)
    if hyp_len > ref_len:
        bp = 1.0
    elif hyp_len == 0:
        return 0.0
    else:
        bp = math.exp(1 - ref_len / hyp_len)
    return min(1.0, max(0.0, bp * math.exp(log_sum)))


def reference_text(ground_truth: Any) -> str:
    """The reference report from a string, a dict with `ground_truth`/`report`, or a list/array of strings."""
    if isinstance(ground_truth, dict):
        ground_truth = ground_truth.get("ground_truth", ground_truth.get("report", ""))
    if hasattr(ground_truth, "tolist") and not isinstance(ground_truth, str):
        ground_truth = ground_truth.tolist()
    if isinstance(ground_truth, (list, tuple)):
        ground_truth = " ".join(str(x) for x in ground_truth[:64])
    if isinstance(ground_truth, bytes):
        ground_truth = ground_truth.decode("utf-8", "replace")
    return ground_truth if isinstance(ground_truth, str) else ("" if ground_truth is None else str(ground_truth))


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """Report reward in [0, 1]: BLEU-4 of the answer section against the reference (see module rule)."""
    answer, _ = answer_section(solution_str)
    hyp = normalize_text(answer)
    ref, ref_counts = _reference(reference_text(ground_truth)[:MAX_REPLY_CHARS])
    if tuple(hyp) == ref:
        value = 1.0 if ref else 0.0  # an empty answer to an empty reference earns nothing
    else:
        value = sentence_bleu4(hyp, ref, ref_counts)
    return {"score": value, "bleu": value, "hyp_len": float(len(hyp)), "ref_len": float(len(ref))}

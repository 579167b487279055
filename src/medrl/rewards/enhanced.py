"""Enhanced medical reward: spatial accuracy, semantic understanding, reasoning quality, clinical relevance.

score = w_spatial * spatial + w_semantic * semantic + w_reasoning * reasoning + w_clinical * clinical,
weights 0.4/0.3/0.2/0.1 for rows with true boxes and 0.3/0.4/0.2/0.1 for no-finding rows
(kwargs `weights` / `weights_no_finding` override; normalised to sum 1). Every part is in [0, 1], so is the score.

- spatial: Hungarian-matched IoU where each box counts with the importance weight of
  the anatomical zone holding its centre (knowledge.yaml): sum(w_true * IoU) /
  (sum w_true + sum w of unmatched predicted boxes). No-finding rows: no box and a
  no-finding statement 1, no box 0.5, any box 0.
- semantic: abnormalities and regions named in the answer (negated mentions such as
  "no pneumothorax" do not count) against the reference text in extra_info
  (`reference`, `answer`, `report`, `label`, `findings`) when there is one:
  0.7 x severity-weighted Jaccard of abnormalities + 0.3 x Jaccard of regions; without a
  reference: 0.6 x (names an abnormality) + 0.4 x (names the region of a true box).
  No-finding rows: a no-finding statement and no abnormality asserted 1, else 0.
- reasoning: in `<think>`: systematic approach, differential, evidence (a third each,
  saturating at 2/1/2 mentions), scaled down for very short reasoning; 0 without `<think>`.
- clinical: location 0.4 + descriptor (size/shape/density) 0.3 + actionable or severe
  finding 0.3; no-finding rows: a clear no-finding statement 1 (0.7 when over 40 words).

A part that fails (bad knowledge file, unexpected data) is replaced by the IoU
score and counted in `fallbacks`. `area_ratio` and `hit50` are the box-growth monitor
(`medrl.rewards.box_growth`), as the IoU reward returns them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

import yaml

from medrl.boxes import Box, BoxError, check_convention, match_boxes
from medrl.rewards import box_growth
from medrl.rewards.answer import answer_section, extract_think
from medrl.rewards.iou import GroundingParse, image_geometry, score_answer, truth_boxes

logger = logging.getLogger(__name__)

KEYS = ("score", "spatial", "semantic", "reasoning", "clinical", "iou", "fallbacks", "n_pred", "n_true",
        "no_finding_truth", *box_growth.KEYS)
WEIGHTS = {"spatial": 0.4, "semantic": 0.3, "reasoning": 0.2, "clinical": 0.1}
WEIGHTS_NO_FINDING = {"spatial": 0.3, "semantic": 0.4, "reasoning": 0.2, "clinical": 0.1}
PARTS = tuple(WEIGHTS)
REFERENCE_KEYS = ("reference", "answer", "report", "label", "labels", "findings", "abnormality")
# What a failing part may raise; anything else is a bug and should surface in tests.
PART_ERRORS = (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, OverflowError, AttributeError)

_WORD_RE = re.compile(r"[a-z0-9]+|[.;!?\n]")
_NEGATIONS = {"no", "without", "not", "negative", "free", "absence", "absent", "resolved"}
_WARNED: set = set()
_BOUNDARY = {".", ";", "!", "?", "\n", "but", "however"}


@dataclass(frozen=True, eq=False)  # hashed by identity: the reference-scan cache keys on it
class Knowledge:
    """The knowledge base: region weights/zones, abnormality severities, and a term index."""

    region_weight: dict[str, float]
    zones: tuple[tuple[str, tuple[float, float, float, float]], ...]
    default_region: str
    severity: dict[str, float]
    terms: dict[tuple[str, ...], tuple[tuple[str, str], ...]]  # word tuple -> ((kind, name), ...)
    starts: dict[str, tuple[int, ...]]  # first word of a term -> term lengths, longest first


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{where}: expected a number in [0, 1], got {value!r}")
    return float(value)


def parse_knowledge(raw: Any, source: str = "knowledge") -> Knowledge:
    """Validate a knowledge mapping (see knowledge.yaml); raises ValueError naming `source`."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping")
    regions, abn = raw.get("regions") or {}, raw.get("abnormalities") or {}
    if len(regions) < 5 or len(abn) < 7:
        raise ValueError(f"{source}: needs at least 5 regions and 7 abnormalities, got {len(regions)} and {len(abn)}")
    terms: dict[tuple[str, ...], list[tuple[str, str]]] = {}

    def add(kind: str, name: str, words: Any) -> None:
        if not isinstance(words, list):
            raise ValueError(f"{source}: {kind} {name!r}: terms must be a list")
        for term in words + ([name] if kind in ("region", "abnormality") else []):
            key = tuple(_WORD_RE.findall(str(term).lower()))
            if key:
                terms.setdefault(key, []).append((kind, name))

    weights, zones = {}, []
    for name, r in regions.items():
        weights[name] = _num(r.get("weight"), f"{source}: region {name!r} weight")
        add("region", name, r.get("terms", []))
        if r.get("zone") is not None:
            z = r["zone"]
            if not (isinstance(z, list) and len(z) == 4):
                raise ValueError(f"{source}: region {name!r} zone must be [x1, y1, x2, y2]")
            zones.append((name, tuple(_num(v, f"{source}: region {name!r} zone") for v in z)))
    severity = {}
    for name, a in abn.items():
        severity[name] = _num(a.get("severity"), f"{source}: abnormality {name!r} severity")
        add("abnormality", name, a.get("terms", []))
    for group in ("descriptors", "reasoning", "clinical"):
        for kind, words in (raw.get(group) or {}).items():
            add(f"{group}.{kind}", kind, words)
    default = raw.get("default_region", next(iter(weights)))
    if default not in weights:
        raise ValueError(f"{source}: default_region {default!r} is not a region")
    frozen = {k: tuple(dict.fromkeys(v)) for k, v in terms.items()}
    starts: dict[str, set] = {}
    for key in frozen:
        starts.setdefault(key[0], set()).add(len(key))
    return Knowledge(weights, tuple(zones), default, severity, frozen,
                     {w: tuple(sorted(n, reverse=True)) for w, n in starts.items()})


@lru_cache(maxsize=8)
def load_knowledge(path: str | None = None) -> Knowledge:
    """The knowledge base from `path`, or the packaged knowledge.yaml."""
    if path:
        with open(path, encoding="utf-8") as fh:
            return parse_knowledge(yaml.safe_load(fh), path)
    text = resources.files("medrl.rewards").joinpath("knowledge.yaml").read_text(encoding="utf-8")
    return parse_knowledge(yaml.safe_load(text), "medrl/rewards/knowledge.yaml")


@dataclass
class Mentions:
    """What a text names: regions, asserted and negated abnormalities, and counts of other term kinds."""

    regions: set
    abnormalities: set
    negated: set
    counts: dict


def find_mentions(text: str, kb: Knowledge, max_words: int = 3000) -> Mentions:
    """Scan `text` word by word for knowledge-base terms (longest match first)."""
    words = _WORD_RE.findall(text[:20_000].lower())[:max_words]
    m = Mentions(set(), set(), set(), {})
    i, n, last_neg = 0, len(words), -100
    starts, terms = kb.starts, kb.terms
    while i < n:
        w = words[i]
        if w in _BOUNDARY:
            last_neg = -100
            i += 1
            continue
        if w in _NEGATIONS:
            last_neg = i
        sizes = starts.get(w)
        hit = None
        if sizes:  # most words start no term: one dict lookup and on
            for size in sizes:
                if i + size <= n:
                    hit = terms.get(tuple(words[i:i + size]))
                    if hit:
                        break
        if not hit:
            i += 1
            continue
        for kind, name in hit:
            if kind == "region":
                m.regions.add(name)
            elif kind == "abnormality":
                (m.negated if i - last_neg <= 4 else m.abnormalities).add(name)
            else:
                m.counts[kind] = m.counts.get(kind, 0) + 1
        i += size
    return m


@lru_cache(maxsize=4096)
def _reference_mentions(text: str, kb: Knowledge) -> Mentions:
    # The samples of one prompt share their reference: scan it once.
    return find_mentions(text, kb)


def box_region(box: Sequence[float], kb: Knowledge) -> str:
    """The anatomical zone that contains the centre of a [0, 1] box."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for name, (x1, y1, x2, y2) in kb.zones:
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            return name
    return kb.default_region


def spatial_part(pred: Sequence[Box], true: Sequence[Box], no_finding: bool, kb: Knowledge,
                 pairs: Sequence[tuple[int, int, float]] | None = None) -> float:
    """Anatomy-weighted matched IoU (see the module rule); `pairs` reuses a matching already made."""
    if not true:
        return 0.0 if pred else (1.0 if no_finding else 0.5)
    if not pred:
        return 0.0
    w_true = [kb.region_weight[box_region(b, kb)] for b in true]
    w_pred = [kb.region_weight[box_region(b, kb)] for b in pred]
    if pairs is None:
        pairs = match_boxes(pred, true)
    matched_pred = {p for p, _, _ in pairs}
    num = sum(w_true[t] * v for _, t, v in pairs)
    den = sum(w_true) + sum(w for k, w in enumerate(w_pred) if k not in matched_pred)
    return min(1.0, max(0.0, num / den)) if den > 0 else 0.0


def _jaccard(a: set, b: set, weight: dict | None = None) -> float:
    union = a | b
    if not union:
        return 1.0
    w = (lambda x: weight.get(x, 0.5)) if weight else (lambda x: 1.0)
    return sum(w(x) for x in a & b) / sum(w(x) for x in union)


def semantic_part(ans: Mentions, ref: Mentions | None, true: Sequence[Box], no_finding: bool, kb: Knowledge) -> float:
    """Findings and anatomy of the answer against the reference (see the module rule)."""
    if not true:
        return 1.0 if (no_finding and not ans.abnormalities) else 0.0
    if no_finding and not ans.abnormalities:
        return 0.0
    if ref is not None and (ref.abnormalities or ref.regions):
        abn = _jaccard(ans.abnormalities, ref.abnormalities, kb.severity)
        reg = _jaccard(ans.regions, ref.regions)
        return 0.7 * abn + 0.3 * reg
    true_regions = {box_region(b, kb) for b in true}
    reg = 1.0 if ans.regions & true_regions else (0.5 if ans.regions else 0.0)
    return 0.6 * (1.0 if ans.abnormalities else 0.0) + 0.4 * reg


def reasoning_part(think: str, kb: Knowledge) -> float:
    """Systematic approach, differential and evidence in the reasoning (see the module rule)."""
    if not think:
        return 0.0
    c = find_mentions(think, kb).counts
    value = (min(1.0, c.get("reasoning.systematic", 0) / 2) + min(1.0, c.get("reasoning.differential", 0) / 1)
             + min(1.0, c.get("reasoning.evidence", 0) / 2)) / 3
    n_words = len(think.split(None, 15))
    return value * (0.25 if n_words < 5 else 0.6 if n_words < 15 else 1.0)


def clinical_part(answer: str, ans: Mentions, true: Sequence[Box], no_finding: bool, kb: Knowledge) -> float:
    """Specificity and actionability of the answer (see the module rule)."""
    if not true:
        if not no_finding or ans.abnormalities:
            return 0.0
        return 1.0 if len(answer.split(None, 41)) <= 40 else 0.7
    c = ans.counts
    location = 1.0 if c.get("descriptors.location") or ans.regions else 0.0
    descriptor = 1.0 if (c.get("descriptors.size") or c.get("descriptors.shape") or c.get("descriptors.density")) else 0.0
    severe = max((kb.severity[a] for a in ans.abnormalities), default=0.0) >= 0.8
    action = 1.0 if (c.get("clinical.actionable") or severe) else 0.0
    return 0.4 * location + 0.3 * descriptor + 0.3 * action


def reference_from(extra_info: Any) -> str | None:
    """The reference text for the semantic part, from the first present key of REFERENCE_KEYS."""
    if not isinstance(extra_info, dict):
        return None
    for key in REFERENCE_KEYS:
        value = extra_info.get(key)
        if hasattr(value, "tolist") and not isinstance(value, str):
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            value = " ; ".join(str(v) for v in value[:64])
        if isinstance(value, str) and value.strip():
            return value
    return None


def _check_weights(w: Any) -> dict:
    if not isinstance(w, dict) or any(k not in PARTS for k in w) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf") for v in w.values()):
        raise ValueError(f"enhanced reward: weights must map {PARTS} to numbers >= 0, got {w!r}")
    return w


def score_details(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", weights: dict | None = None, weights_no_finding: dict | None = None,
                  knowledge: str | None = None, **kwargs: Any) -> tuple[dict, GroundingParse]:
    """The enhanced reward (keys `KEYS`) and the boxes its spatial and IoU parts read (as the IoU reward reads them)."""
    check_convention(box_convention, "enhanced reward: box_convention")
    answer, _ = answer_section(solution_str)
    try:
        true = truth_boxes(ground_truth)
    except BoxError as exc:  # a truth that does not read scores 0, as in the IoU reward
        return ({**dict.fromkeys(KEYS, 0.0), **box_growth.NO_MATCH},
                GroundingParse([], [], [], False, box_convention, str(exc)))
    width, height, min_px, max_px = image_geometry(extra_info, kwargs)
    base, pred, pairs = score_answer(answer, true, box_convention, width, height, min_px, max_px)
    no_finding = bool(base["no_finding"])
    parts: dict[str, float] = {}
    fallbacks = 0
    try:
        kb = load_knowledge(knowledge)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        if knowledge not in _WARNED:  # once per file, not once per rollout
            _WARNED.add(knowledge)
            logger.warning("enhanced reward: knowledge base unusable, every part falls back to IoU: %s", exc)
        kb = None
    try:
        if kb is not None:
            ans = find_mentions(answer, kb)
            ref_text = reference_from(extra_info)
            ref = _reference_mentions(ref_text[:20_000], kb) if ref_text else None
    except PART_ERRORS as exc:
        logger.debug("enhanced reward: reading the terms failed (%s); every part uses IoU", exc)
        kb = None
    if kb is not None:
        jobs = {
            "spatial": lambda: spatial_part(pred, true, no_finding, kb, pairs),
            "semantic": lambda: semantic_part(ans, ref, true, no_finding, kb),
            "reasoning": lambda: reasoning_part(extract_think(solution_str), kb),
            "clinical": lambda: clinical_part(answer, ans, true, no_finding, kb),
        }
        for name, job in jobs.items():
            try:
                value = float(job())
                if value != value:
                    raise ValueError("NaN")
                parts[name] = min(1.0, max(0.0, value))
            except PART_ERRORS as exc:
                logger.debug("enhanced reward: part %s failed (%s); using IoU", name, exc)
    for name in PARTS:
        if name not in parts:
            parts[name] = base["score"]
            fallbacks += 1
    w = _check_weights(weights_no_finding or WEIGHTS_NO_FINDING) if not true else _check_weights(weights or WEIGHTS)
    total = sum(float(w.get(k, 0.0)) * parts[k] for k in PARTS)
    norm = sum(float(w.get(k, 0.0)) for k in PARTS)
    score = min(1.0, max(0.0, total / norm)) if norm > 0 else 0.0
    result = {"score": score, **parts, "iou": base["score"], "fallbacks": float(fallbacks),
              "n_pred": base["n_pred"], "n_true": base["n_true"], "no_finding_truth": 0.0 if true else 1.0,
              **{k: base[k] for k in box_growth.KEYS}}
    return result, GroundingParse(pred, true, pairs, no_finding, box_convention)


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  box_convention: str = "auto", weights: dict | None = None, weights_no_finding: dict | None = None,
                  knowledge: str | None = None, **kwargs: Any) -> dict:
    """Enhanced grounding reward in [0, 1] with keys `KEYS` (see the module rule)."""
    return score_details(data_source, solution_str, ground_truth, extra_info, box_convention, weights,
                         weights_no_finding, knowledge, **kwargs)[0]

"""Findings reward for report writing: F1 over (CheXpert observation, status) pairs read by rules.

The rule follows the CheXpert labeller (mention phrases per observation, then negation and
uncertainty cues), written as two compiled regular expressions so that it scores thousands
of reports a second on one core:

- Observations: the 14 of CheXpert (`OBSERVATIONS`), each with the phrases of real reports
  (`MENTIONS`): "left-sided pleural effusion", "the cardiac silhouette is enlarged", "heart
  size is normal", "costophrenic angles are sharp", "ET tube", ... Laterality and severity are
  not scored (the 14 observations have none): "small left effusion" and "large right effusion"
  both read as pleural effusion, present.
- Status per mention: the nearest cue before it in the same clause (`no`, `without`, `no
  evidence of`, ... -> absent; `possible`, `may represent`, `cannot exclude`, ... -> uncertain),
  else a cue right after it (`is not seen`, `is normal`, `has resolved` -> absent; `cannot be
  excluded`, `is suspected` -> uncertain; a comma list shares it: "effusion, consolidation and
  pneumothorax are not seen"), else present. A cue's scope ends at the end of the sentence
  (`.`, `;`, `!`, `?`, a line break) and at `but`, `however`, `although`, `except`, `which`
  and ", the"/", there"; "no change in", "no interval increase" are not negations.
- Status per report: present beats uncertain beats absent when an observation is mentioned
  more than once (CheXpert's rule); repeating a sentence adds nothing.

Choices:
- **Uncertain** is a status of its own: "possible consolidation" against "consolidation" is half
  an agreement (0.5), against "no consolidation" none. Hedging costs, but less than being wrong.
- **No finding** is derived, as in CheXpert: present when the report says something normal
  (an absent observation, or "no acute cardiopulmonary process", "normal chest radiograph", ...)
  and no pathology (any observation but support devices) is present or uncertain. It is only
  ever recorded as present: "absent" would count every finding twice. A side that states no
  finding covers the other side's absent observations it does not mention, so "No acute
  cardiopulmonary process." against "The lungs are clear. No effusion or pneumothorax." scores 1.
- The score is F1 = 2 x agreements / (#pairs of the answer + #pairs of the reference), in [0, 1].
  A reference with no pair (it mentions none of the observations) scores 0 for every answer:
  there is nothing clinical to compare, and an empty answer must never earn credit.

Keys: `score` (= `f1`), `precision`, `recall`, `n_pred`, `n_ref`, then one key per observation,
its agreement on this row: 1 same status (both silent counts), 0.5 present vs uncertain, 0 else.
verl needs the same numeric keys on every row; they are.

Libraries measured for the negation step (benchmarks/bench_findings.py, same reports, one core,
CPU time; docs/rewards.md "The findings reward"): negspacy 1.1.0's NegEx 2,042-2,309 reports/s
for negation alone (no uncertainty, no "no finding"), medspacy 1.3.1's ConText 151 reports/s;
this module, the whole reward, 7,057 in the same run (7,306-7,653 on a quieter machine). A
reward on negspacy would sit at or under the 2,000 reports/s target with spaCy in every reward
worker, so the rules are written here, after NegEx's cue lists and the CheXpert labeller.
Answers are read up to their last full sentence in the first 16,000 characters. RadGraph and
CheXbert F1 are optional learned rewards (`medrl.rewards.learned`).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from functools import lru_cache
from typing import Any

from medrl.rewards.answer import MAX_REPLY_CHARS, answer_section
from medrl.rewards.bleu import reference_text

OBSERVATIONS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "enlarged_cardiomediastinum", "fracture",
                "lung_lesion", "lung_opacity", "pleural_effusion", "pleural_other", "pneumonia", "pneumothorax",
                "support_devices", "no_finding")
PRESENT, UNCERTAIN, ABSENT = "present", "uncertain", "absent"
KEYS = ("score", "f1", "precision", "recall", "n_pred", "n_ref", *OBSERVATIONS)
# Pathologies: what rules out "no finding" (CheXpert leaves support devices out).
_PATHOLOGY = tuple(o for o in OBSERVATIONS if o not in ("support_devices", "no_finding"))
_RANK = {PRESENT: 3, UNCERTAIN: 2, ABSENT: 1}

# Mention phrases per observation, as regular expressions on lower-cased text. A phrase with a
# fixed status ("heart size is normal") is read as written; the others take their status from cues.
_W = r"(?:[\w-]+\s+)"  # one word, for "small left-sided pleural effusion"
MENTIONS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "atelectasis": ((r"atelecta\w*", None), (r"(?:lobar|segmental|lung)\s+collapse", None),
                    (r"volume\s+loss", None)),
    "edema": ((r"o?edema", None), (r"(?:pulmonary\s+)?vascular\s+congestion", None), (r"heart\s+failure", None),
              (r"\bchf\b", None)),
    "cardiomegaly": (
        (r"(?:heart|cardiac)\s+(?:size\s+)?(?:is\s+|appears\s+)?(?:normal|within\s+normal\s+limits|not\s+enlarged)",
         ABSENT),
        (r"normal(?:\s+|-)(?:sized\s+)?(?:heart|cardiac\s+size|cardiac\s+silhouette)", ABSENT),
        (r"cardiomegaly", None), (r"cardiac\s+enlargement", None), (r"enlarged\s+(?:heart|cardiac\s+silhouette)", None),
        (r"(?:heart\s+size|cardiac\s+size|cardiac\s+silhouette|cardiac\s+contours?|cardiac\s+shadow|heart)\b", None)),
    "consolidation": ((r"consolidat\w*", None),),
    "enlarged_cardiomediastinum": (
        (r"(?:enlarged|widened)\s+(?:cardio)?mediastin\w*", None), (r"mediastinal\s+(?:widening|enlargement)", None),
        (r"normal\s+(?:cardio)?mediastinal\s+(?:silhouette|contours?)", ABSENT),
        (r"(?:cardio)?mediastinal\s+(?:silhouette|contours?|width)|(?:cardio)?mediastinum", None)),
    "fracture": ((r"fractur\w*", None),),
    "lung_lesion": ((r"nodul\w*|mass(?:es)?\b|lesions?\b|tumou?rs?\b|neoplasm\w*|carcinoma|granulomas?", None),),
    "lung_opacity": ((r"lungs?\s+(?:are|is)\s+clear|clear\s+lungs", ABSENT),
                     (r"opaci\w*|infiltrat\w*|air\s*-?space\s+disease|haziness", None)),
    "pleural_effusion": ((r"costophrenic\s+angles?\s+(?:are|is)\s+sharp", ABSENT),
                         (r"effusions?|pleural\s+fluid|hydrothorax|blunting\s+of\s+(?:the\s+)?" + _W + r"?"
                          r"costophrenic", None)),
    "pleural_other": ((r"pleural\s+(?:thickening|plaques?|scarring)|fibrothorax|(?:apical\s+)?pleural\s+cap", None),),
    "pneumonia": ((r"pneumoni\w*|infectio\w*|infectious\s+process|aspiration", None),),
    "pneumothorax": ((r"pneumothora\w*|\bptx\b", None),),
    "support_devices": ((r"(?:endotracheal|\bet|\bng|nasogastric|orogastric|feeding|chest|enteric|tracheostomy|"
                         r"dobhoff)\s+tubes?|(?:central\s+venous|central|picc|swan-ganz|\bij)\s+(?:line|catheter)s?|"
                         r"\bpicc\b|pacemaker|pacer|defibrillator|\bicd\b|sternotomy\s+wires|surgical\s+clips|"
                         r"port-a-cath|catheter|stent", None),),
    "no_finding": ((r"no\s+acute\s+(?:cardiopulmonary|cardiothoracic|intrathoracic|pulmonary|chest)?\s*"
                    r"(?:process|abnormalit\w*|disease|findings?|pathology)|no\s+(?:\w+\s+){0,2}abnormalit\w*|"
                    r"normal\s+(?:chest|study|examination|exam|radiograph|chest\s+(?:x-?ray|radiograph))|"
                    r"no\s+(?:significant\s+)?findings", PRESENT),),
}

# Cues. Longer phrases come first: "cannot be excluded" must win over "not", "no change" over "no".
CUES = (
    ("pseudo", r"no\s+(?:significant\s+|interval\s+|definite\s+)?(?:change|increase|decrease|worsening|improvement)"
               r"|not\s+only|without\s+change"),
    ("post_unc", r"(?:(?:is|are)\s+)?(?:cannot|can\s*not|can't|could\s+not|not)\s+(?:be\s+)?(?:entirely\s+|"
                 r"completely\s+)?(?:excluded|ruled\s+out)|(?:is|are)\s+(?:suspected|questioned|possible|"
                 r"not\s+excluded)"),
    ("pre_unc", r"(?:cannot|can\s*not|can't|difficult\s+to)\s+(?:entirely\s+)?(?:exclude|rule\s+out)|possibl[ey]"
                r"|probabl[ey]|likely|may|might|could|questionabl[ey]|question\s+of|suspicious\s+for|suspected"
                r"|concerning\s+for|worrisome\s+for|suggest\w*|differential|borderline|equivocal"
                r"|presumed|indeterminate|(?:to\s+)?rule\s+out|r/o|evaluate\s+for|assess\s+for"),
    ("either", r"versus|vs"),  # "atelectasis vs. pneumonia": both uncertain
    ("post_neg", r"(?:(?:is|are|was|were|has|have)\s+(?:been\s+)?)?(?:not\s+(?:\w+\s+)?(?:seen|identified|"
                 r"visuali[sz]ed|present|demonstrated|appreciated|evident|visible|detected|noted|observed|enlarged)"
                 r"|no\s+longer\s+(?:\w+\s+)?(?:seen|present|visible|identified|evident|visuali[sz]ed)|resolved"
                 r"|absent|ruled\s+out|normal(?:\s+in\s+size)?|within\s+normal\s+limits|unremarkable|negative)"
                 r"|(?:is|are)\s+unlikely"),
    ("pre_neg", r"no|without|unlikely|negative\s+for|free\s+of|clear\s+of|absence\s+of|resolution\s+of|rather\s+than"
                r"|nor|not"),
    ("term", r"but|however|although|though|except|aside\s+from|apart\s+from|which|whereas|while"),
    ("clause", r",\s*(?:the|there|with)\b"),
    ("bound", r"(?<!\bvs)\.(?!\d)|[;!?\n]"),  # "4.5 cm" is one sentence
)
# Whole words only ("no" is not in "nodule", "likely" not in "unlikely"); sentence ends are punctuation.
_CUE_RE = re.compile("|".join(f"(?P<{kind}>{pattern})" if kind in ("bound", "clause") else
                              rf"(?P<{kind}>(?<![\w/-])(?:{pattern})(?![\w-]))" for kind, pattern in CUES))
_MENTION_GROUPS: list[tuple[str, str | None]] = []


def _mention_regex() -> re.Pattern:
    alternatives = []
    for obs, phrases in MENTIONS.items():
        for pattern, fixed in phrases:
            alternatives.append(f"(?P<m{len(_MENTION_GROUPS)}>{pattern})")
            _MENTION_GROUPS.append((obs, fixed))
    return re.compile(r"(?<![\w-])(?:" + "|".join(alternatives) + r")")


_MENTION_RE = _mention_regex()
_POST_GAP = 30  # characters between a mention and a cue after it ("heart size appears to be normal")
_LIST_GAP_RE = re.compile(r"[\s,]*(?:(?P<conj>and|or|nor)\s+)?(?:the\s+)?(?:\w+\s+)?")
_NO_COMMA_RE = re.compile(r"[^,]*")
_STATUS = {"pre_neg": ABSENT, "pre_unc": UNCERTAIN, "post_neg": ABSENT, "post_unc": UNCERTAIN, "either": UNCERTAIN}
_PRE, _POST = ("pre_neg", "pre_unc", "either"), ("post_neg", "post_unc", "either")


MAX_READ_CHARS = MAX_REPLY_CHARS - 4_000  # below every reward's clip, so the cut below is this module's own


def _prepare(text: str) -> str:
    if len(text) > MAX_READ_CHARS:  # a clipped sentence ("heart size is n") must not read as a finding
        text = text[:MAX_READ_CHARS]
        text = text[:max(text.rfind("."), text.rfind("\n"), 0)]
    return unicodedata.normalize("NFKC", text).lower()


def _statuses(text: str) -> list[tuple[str, str]]:
    """(observation, status) of every mention in `text`, in order (see the module rule)."""
    cues = [(m.start(), m.end(), m.lastgroup) for m in _CUE_RE.finditer(text) if m.lastgroup != "pseudo"]
    mentions = [(m.start(), m.end(), *_MENTION_GROUPS[int(m.lastgroup[1:])]) for m in _MENTION_RE.finditer(text)]
    starts = [c[0] for c in cues]
    post: list[str | None] = [None] * len(mentions)
    linked = [False] * len(mentions)  # shares the cue of a list ending in "and/or/nor X are not seen"
    for i in range(len(mentions) - 1, -1, -1):  # backwards: a list shares the cue after its last item
        end = mentions[i][1]
        k = bisect_left(starts, end)
        nxt = mentions[i + 1] if i + 1 < len(mentions) else None
        cue = cues[k] if k < len(cues) else None
        if nxt is not None and (cue is None or nxt[0] < cue[0]):
            gap = _LIST_GAP_RE.fullmatch(text, end, nxt[0])
            if gap and (gap.group("conj") or linked[i + 1]):
                post[i], linked[i] = post[i + 1], True
        elif cue is not None and cue[2] in _POST and cue[0] - end <= _POST_GAP \
                and _NO_COMMA_RE.fullmatch(text, end, cue[0]):
            post[i] = _STATUS[cue[2]]
    out = []
    for (start, end, obs, fixed), after in zip(mentions, post):
        status = fixed
        if status is None:
            k = bisect_left(starts, start) - 1
            while k >= 0 and cues[k][1] > start:  # a cue inside the mention phrase ("heart size is normal")
                k -= 1
            kind = cues[k][2] if k >= 0 else None
            status = _STATUS[kind] if kind in _PRE else None
            status = status or after or PRESENT
        out.append((obs, status))
    return out


def read_report(text: str) -> tuple[tuple[str, str], ...]:
    """The (observation, status) pairs a report states, no finding derived, sorted by observation."""
    if not isinstance(text, str) or not text.strip():
        return ()
    found: dict[str, str] = {}
    for obs, status in _statuses(_prepare(text)):
        if obs not in found or _RANK[status] > _RANK[found[obs]]:
            found[obs] = status
    normal = found.pop("no_finding", None) is not None or ABSENT in found.values()
    if normal and not any(found.get(o) in (PRESENT, UNCERTAIN) for o in _PATHOLOGY):
        found["no_finding"] = PRESENT
    return tuple(sorted(found.items()))


def _agreement(a: str | None, b: str | None) -> float:
    if a == b:
        return 1.0
    return 0.5 if {a, b} == {PRESENT, UNCERTAIN} else 0.0


def compare(pred: tuple[tuple[str, str], ...], ref: tuple[tuple[str, str], ...]) -> tuple[dict, dict, dict]:
    """(answer pairs, reference pairs, agreement per observation) after the no-finding cover rule."""
    p, r = dict(pred), dict(ref)
    # A side stating no finding covers the other side's absent observations it does not mention.
    p_kept = {o: s for o, s in p.items() if not (s == ABSENT and o not in r and "no_finding" in r)}
    r_kept = {o: s for o, s in r.items() if not (s == ABSENT and o not in p and "no_finding" in p)}
    return p_kept, r_kept, {o: _agreement(p_kept.get(o), r_kept.get(o)) for o in OBSERVATIONS}


Pairs = tuple[tuple[str, str], ...]


def pair_counts(pred: Pairs, ref: Pairs) -> dict[str, tuple[float, int, int]]:
    """Per observation (agreements, pairs in the answer, pairs in the reference), for F1 over rows or a corpus."""
    p, r, _ = compare(pred, ref)
    return {o: (_agreement(p[o], r[o]) if o in p and o in r else 0.0, int(o in p), int(o in r)) for o in OBSERVATIONS}


def corpus_f1(rows: list[dict[str, tuple[float, int, int]]]) -> tuple[float, float]:
    """(micro F1 over all pairs of all rows, macro F1: the mean over observations seen of each one's F1)."""
    per_obs = {o: [0.0, 0, 0] for o in OBSERVATIONS}
    for counts in rows:
        for o, (tp, n_p, n_r) in counts.items():
            acc = per_obs[o]
            acc[0] += tp
            acc[1] += n_p
            acc[2] += n_r
    tp, n = sum(a[0] for a in per_obs.values()), sum(a[1] + a[2] for a in per_obs.values())
    micro = 2 * tp / n if n else 0.0
    f1s = [2 * a[0] / (a[1] + a[2]) for a in per_obs.values() if a[1] + a[2]]
    return micro, (sum(f1s) / len(f1s) if f1s else 0.0)


# A GRPO group of answers shares its reference: read each reference once. Answers are not cached
# (rarely repeated, and up to 20,000 characters each).
_read_reference = lru_cache(maxsize=4096)(read_report)


def report_findings(answer: str, reference: str) -> dict:
    """What an evaluation record keeps of a report row: each side's statuses and the row's findings F1."""
    pred, ref = read_report(answer), read_report(reference)
    p, r, agree = compare(pred, ref)
    return {"answer": dict(pred), "reference": dict(ref), "f1": _f1(p, r, agree)}


def corpus_f1_of(records: list[dict]) -> tuple[float, float]:
    """(micro, macro) findings F1 over `report_findings` records (see `corpus_f1`)."""
    return corpus_f1([pair_counts(tuple(sorted(rec["answer"].items())), tuple(sorted(rec["reference"].items())))
                      for rec in records])


def _f1(p: dict, r: dict, agree: dict) -> float:
    return 2 * sum(agree[o] for o in p if o in r) / (len(p) + len(r)) if r else 0.0


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict:
    """Findings F1 in [0, 1] of the answer section against the reference report (see the module rule)."""
    answer, _ = answer_section(solution_str)
    p, r, agree = compare(read_report(answer), _read_reference(reference_text(ground_truth)[:MAX_REPLY_CHARS]))
    tp, f1 = sum(agree[o] for o in p if o in r), _f1(p, r, agree)
    return {"score": f1, "f1": f1, "precision": tp / len(p) if p else 0.0, "recall": tp / len(r) if r else 0.0,
            "n_pred": float(len(p)), "n_ref": float(len(r)), **agree}

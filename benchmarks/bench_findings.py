"""Throughput of the findings reward on one core, and of negspacy's NegEx on the same reports.

    python benchmarks/bench_findings.py [--n 10000] [--repeats 5]
    /tmp/nlpvenv/bin/python benchmarks/bench_findings.py --engine negspacy [--n 2000]
    /tmp/nlpvenv2/bin/python benchmarks/bench_findings.py --engine medspacy [--n 2000]

The reports are GRPO-like: a reference of 3-6 sentences in the phrasings of real reports
(findings present, negated, uncertain, paraphrased, "no acute cardiopulmonary process"),
8 sampled answers per reference that keep, drop, negate or swap sentences. `--engine medrl`
(default) times `medrl.rewards.findings.compute_score` per rollout (the reference parse is
cached, as in training, where a group of 8 shares it; answers are not); `--engine negspacy` times negspacy's
NegEx (spaCy's blank English, a sentencizer, an entity ruler with the same observation
phrases, `negex` with the clinical termset) on each answer, one `nlp(text)` per report and
`nlp.pipe` over all, which is what the reward would need at least; `--engine medspacy` times
medspacy's own pipeline (PyRuSH sentences, target matcher, ConText, which also reads uncertainty)
with `nlp.pipe`. Neither is a medrl dependency: install each in a throwaway venv (`python3 -m venv
/tmp/nlpvenv && /tmp/nlpvenv/bin/pip install negspacy`; medspacy 1.3.1 and negspacy 1.1.0 cannot
share one); this script imports nothing from medrl for those engines.
Target (issue 20): >= 2,000 reports/s on one core, judged on CPU seconds of this process
(what one dedicated core does); the median of `--repeats` passes.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

TARGET = 2_000
# (present, absent, uncertain) phrasings per finding, as real reports write them.
PHRASES = [
    ("Small left-sided pleural effusion.", "No pleural effusion.", "Possible small right pleural effusion."),
    ("The cardiac silhouette is enlarged.", "The heart size is normal.", "Borderline cardiomegaly."),
    ("Right lower lobe consolidation.", "There is no focal consolidation.", "Possible consolidation at the left base."),
    ("Small right apical pneumothorax.", "No pneumothorax.", "A small pneumothorax cannot be excluded."),
    ("Mild pulmonary edema.", "No pulmonary edema.", "Findings may represent mild interstitial edema."),
    ("Bibasilar atelectasis.", "No atelectasis.", "Opacity likely atelectasis."),
    ("Endotracheal tube terminates 4 cm above the carina.", "No support devices.", "Possible line in the SVC."),
    ("A 2 cm nodule in the right upper lobe.", "No suspicious pulmonary nodule.", "Questionable nodule at the apex."),
    ("Patchy opacity in the left lower lobe, concerning for pneumonia.", "No evidence of pneumonia.",
     "Cannot exclude early pneumonia."),
    ("Widened mediastinum.", "The cardiomediastinal silhouette is within normal limits.",
     "The mediastinum is possibly widened."),
]
NORMAL = ("No acute cardiopulmonary process.", "The lungs are clear.", "Degenerative changes of the thoracic spine.")


def report_rollouts(n: int, group: int = 8, seed: int = 0) -> list[tuple[str, str, str, dict]]:
    """(data_source, solution, reference, extra_info) rows: n/group references, `group` answers each."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(max(1, n // group)):
        picks = rnd.sample(range(len(PHRASES)), rnd.randint(2, 5))
        ref_s = [PHRASES[i][rnd.choices((0, 1, 2), weights=(4, 5, 1))[0]] for i in picks] + [rnd.choice(NORMAL)]
        for _ in range(group):
            hyp = []
            for s in ref_s:
                u = rnd.random()
                if u < 0.15:
                    continue  # dropped
                if u < 0.35:  # the same finding with another status
                    row = next((p for p in PHRASES if s in p), None)
                    s = rnd.choice(row) if row else s
                hyp.append(s)
            if rnd.random() < 0.2:
                hyp.append(rnd.choice(rnd.choice(PHRASES)))
            # A prior-study number makes every answer unique, as sampled answers are: no cache hit is timed.
            hyp.insert(0, f"Compared with the prior study {rnd.randint(1, 10**9)}.")
            rows.append(("medrl/report", f"<think>Reading the film.</think><answer>{' '.join(hyp)}</answer>",
                         " ".join(ref_s), {}))
    return rows[:n]


def _median_rate(fn, items, repeats: int) -> tuple[float, float]:
    """(median reports per CPU-second, median reports per wall-second) over `repeats` passes."""
    cpu, wall = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(items)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return len(items) / statistics.median(cpu), len(items) / statistics.median(wall)


def medrl_engine(rows, repeats: int) -> list[tuple[str, float, float]]:
    """Time the findings reward per rollout."""
    from medrl.rewards import findings

    def run(items):
        findings._read_reference.cache_clear()  # each pass reads every answer and each group's reference once
        for r in items:
            findings.compute_score(*r)

    run(rows[:200])  # imports and the compiled patterns, untimed
    return [("medrl findings compute_score", *_median_rate(run, rows, repeats))]


NEGSPACY_TERMS = ["pleural effusion", "effusion", "cardiomegaly", "cardiac silhouette", "heart size", "consolidation",
                  "pneumothorax", "edema", "atelectasis", "endotracheal tube", "line", "nodule", "opacity",
                  "pneumonia", "mediastinum", "cardiomediastinal silhouette", "support devices"]


def negspacy_nlp():
    """spaCy blank English + sentencizer + entity ruler (the observation phrases) + negspacy's NegEx."""
    import spacy
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
    from negspacy.termsets import termset

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "OBS", "pattern": [{"LOWER": w} for w in t.split()]} for t in NEGSPACY_TERMS])
    nlp.add_pipe("negex", config={"neg_termset": termset("en_clinical").get_patterns()})
    return nlp


def negspacy_engine(rows, repeats: int) -> list[tuple[str, float, float]]:
    """Time negspacy's NegEx on each answer: one nlp() call per report, and nlp.pipe over all."""
    import re

    nlp = negspacy_nlp()
    texts = [re.sub(r"</?(?:think|answer)>", " ", sol) for _, sol, _, _ in rows]
    nlp(texts[0])
    doc = nlp("No pleural effusion. Small right pneumothorax.")
    print("negspacy reads:", [(e.text, e._.negex) for e in doc.ents])

    def each(items):
        for t in items:
            nlp(t)

    def piped(items):
        for _ in nlp.pipe(items, batch_size=256):
            pass

    return [("negspacy NegEx nlp(text)", *_median_rate(each, texts, repeats)),
            ("negspacy NegEx nlp.pipe", *_median_rate(piped, texts, repeats))]


def medspacy_engine(rows, repeats: int) -> list[tuple[str, float, float]]:
    """Time medspacy's pipeline (its tokenizer, PyRuSH sentences, target matcher, ConText) on each answer."""
    import re

    import medspacy
    from loguru import logger
    from medspacy.target_matcher import TargetRule

    logger.remove()  # PyRuSH logs every sentence at DEBUG through loguru; timing that would be unfair

    nlp = medspacy.load()
    nlp.get_pipe("medspacy_target_matcher").add([TargetRule(t, "OBS") for t in NEGSPACY_TERMS])
    texts = [re.sub(r"</?(?:think|answer)>", " ", sol) for _, sol, _, _ in rows]
    doc = nlp("No pleural effusion. Possible consolidation. Small right pneumothorax.")
    print("medspacy reads:", [(e.text, e._.is_negated, e._.is_uncertain) for e in doc.ents])

    def piped(items):
        for _ in nlp.pipe(items, batch_size=256):
            pass

    return [("medspacy ConText nlp.pipe", *_median_rate(piped, texts, repeats))]


def main() -> None:
    """Print reports/s of the chosen engine, median of several passes, pinned to one core."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engine", choices=("medrl", "negspacy", "medspacy"), default="medrl")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),)
    rows = report_rollouts(args.n)
    engines = {"medrl": medrl_engine, "negspacy": negspacy_engine, "medspacy": medspacy_engine}
    results = engines[args.engine](rows, args.repeats)
    print(f"\n{len(rows)} report rollouts, one core, median of {args.repeats} passes; "
          f"load average before the run: {load[0]:.2f} (a busy machine lowers every figure)")
    print(f"{'engine':<32}{'CPU reports/s':>15}{'wall reports/s':>16}{'target':>9}{'meets':>7}")
    for name, rate, wall_rate in results:
        print(f"{name:<32}{rate:>15,.0f}{wall_rate:>16,.0f}{TARGET:>9,}{'yes' if rate >= TARGET else 'NO':>7}")


if __name__ == "__main__":
    main()

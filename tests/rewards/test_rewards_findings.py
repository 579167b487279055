"""The findings reward: a table of report pairs in real phrasing, each score computed by hand."""

from __future__ import annotations

import math

import pytest

from medrl.rewards import bleu, compose, findings
from medrl.rewards.contract import run_check

REF_EFFUSION = "Small left pleural effusion. No pneumothorax. The heart size is normal."
REF_NORMAL = ("The lungs are clear. There is no focal consolidation, pleural effusion or pneumothorax. "
              "The cardiomediastinal silhouette is normal.")

# (answer, reference, score, why). Pairs: answer A, reference R; F1 = 2 x agreements / (|A| + |R|).
CASES = [
    (REF_EFFUSION, REF_EFFUSION, 1.0, "identical"),
    ("No pleural effusion.", "Small pleural effusion.", 0.0,
     "negation flip: A {effusion absent, no finding}, R {effusion present}"),
    ("No pleural effusion. No pneumothorax. The heart size is normal.", REF_EFFUSION, 4 / 7,
     "negation flip in a full report: A {effusion absent, pneumothorax absent, cardiomegaly absent, no finding}, "
     "R {effusion present, pneumothorax absent, cardiomegaly absent}: 2 x 2 / (4 + 3)"),
    ("Possible small left pleural effusion. No pneumothorax. The heart size is normal.", REF_EFFUSION, 5 / 6,
     "uncertain against present is half an agreement: 2 x 2.5 / (3 + 3)"),
    ("Pneumothorax cannot be excluded.", "No pneumothorax.", 0.0, "uncertain against absent: no agreement"),
    ("Left-sided pleural effusion is present; the heart is normal in size. There is no evidence of pneumothorax.",
     REF_EFFUSION, 1.0, "paraphrase of every sentence"),
    ("The cardiac silhouette is enlarged.", "Cardiomegaly.", 1.0, "paraphrase: cardiomegaly"),
    ("Heart size is normal. Pleural effusion, consolidation and pneumothorax are not seen.",
     "Normal heart size. No consolidation, effusion or pneumothorax.", 1.0, "a list negated after it"),
    ("No acute cardiopulmonary process.", REF_NORMAL, 1.0,
     "no finding covers the reference's absent observations that the answer does not mention"),
    ("No acute cardiopulmonary process.", REF_EFFUSION, 0.0,
     "a normal answer to an effusion: A {no finding}, R {effusion present} (its absents are covered)"),
    ("Small right pleural effusion. No pneumothorax. The heart size is normal.", REF_EFFUSION, 1.0,
     "laterality is not scored: the CheXpert observations have none"),
    ("Small left pleural effusion.", REF_EFFUSION, 0.5, "one of three pairs: 2 x 1 / (1 + 3)"),
    ("Small left pleural effusion. " * 20, REF_EFFUSION, 0.5, "repetition adds nothing: as said once"),
    ("Right lower lobe opacity, possibly pneumonia.", "Right lower lobe consolidation concerning for pneumonia.",
     0.5, "A {opacity present, pneumonia uncertain}, R {consolidation present, pneumonia uncertain}: 2 x 1 / 4"),
    ("No pneumothorax but there is a small effusion.", "Small pleural effusion. No pneumothorax.", 1.0,
     "negation scope ends at 'but'"),
    ("No change in the moderate right pleural effusion.", "Moderate right pleural effusion.", 1.0,
     "'no change in' is not a negation"),
    ("Atelectasis vs. pneumonia.", "Bibasilar atelectasis, possibly pneumonia.", 2 * 1.5 / 4,
     "'vs' makes both sides uncertain: atelectasis uncertain vs present 0.5, pneumonia 1"),
    ("ET tube in place. No pneumothorax.", "Endotracheal tube terminates 4.5 cm above the carina. No pneumothorax.",
     1.0, "support devices do not rule out no finding; decimals do not end a sentence"),
    ("<think>There is no pleural effusion.</think><answer>" + REF_EFFUSION + "</answer>", REF_EFFUSION, 1.0,
     "only the answer section is read"),
    ("", REF_EFFUSION, 0.0, "empty answer"),
    ("   ", REF_NORMAL, 0.0, "blank answer: says nothing, so no no-finding credit either"),
    ("", "", 0.0, "empty reference: nothing to compare, never credit"),
    ("Degenerative changes of the thoracic spine.", "Degenerative changes of the thoracic spine.", 0.0,
     "a reference with no CheXpert observation scores 0 for every answer"),
    (REF_EFFUSION + " The heart size is normal." * 5000, REF_EFFUSION, 1.0,
     "a very long answer is read up to its last full sentence in the first 16,000 characters"),
    ("a" * 200_000, REF_EFFUSION, 0.0, "200,000 characters of nothing"),
]


@pytest.mark.parametrize("answer, reference, expected, why", CASES, ids=[c[3][:40] for c in CASES])
def test_findings_table(answer, reference, expected, why):
    res = findings.compute_score("medrl/report", answer, reference)
    assert res["score"] == pytest.approx(expected, abs=1e-12), why
    assert res["f1"] == res["score"]
    assert tuple(res) == findings.KEYS


def test_a_negation_flip_costs_what_bleu_does_not_see():
    # BLEU pays for the shared words; the findings reward reads the one that matters.
    flip = ("No pleural effusion. No pneumothorax. The heart size is normal.", REF_EFFUSION)
    assert bleu.compute_score("r", *flip)["score"] > 0.5
    assert findings.compute_score("r", *flip)["score"] < 0.6
    assert findings.compute_score("r", *flip)["pleural_effusion"] == 0.0


def test_per_observation_agreement_keys():
    res = findings.compute_score("r", "Possible left pleural effusion. No pneumothorax.", REF_EFFUSION)
    assert res["pleural_effusion"] == 0.5  # uncertain vs present
    assert res["pneumothorax"] == 1.0
    assert res["cardiomegaly"] == 0.0  # the reference says "heart size is normal"; the answer is silent
    assert res["fracture"] == 1.0  # both silent: they agree
    assert (res["n_pred"], res["n_ref"]) == (2.0, 3.0)
    assert res["precision"] == pytest.approx(1.5 / 2) and res["recall"] == pytest.approx(1.5 / 3)


@pytest.mark.parametrize("text, expected", [
    ("Small left-sided pleural effusion.", {"pleural_effusion": "present"}),
    ("The cardiac silhouette is enlarged.", {"cardiomegaly": "present"}),
    ("The heart is not enlarged.", {"cardiomegaly": "absent", "no_finding": "present"}),
    ("No pneumothorax.", {"pneumothorax": "absent", "no_finding": "present"}),
    ("Possible consolidation.", {"consolidation": "uncertain"}),
    ("No acute cardiopulmonary process.", {"no_finding": "present"}),
    ("No acute cardiopulmonary process. Small effusion.", {"pleural_effusion": "present"}),
    ("Pneumonia is unlikely.", {"pneumonia": "absent", "no_finding": "present"}),
    ("Cardiomegaly, pneumothorax is not seen.", {"cardiomegaly": "present", "pneumothorax": "absent"}),
    ("Normal heart size, small left effusion.", {"cardiomegaly": "absent", "pleural_effusion": "present"}),
    ("Findings suggest pulmonary edema. Widened mediastinum.", {"edema": "uncertain",
                                                                 "enlarged_cardiomediastinum": "present"}),
    ("There is a nodule in the lower zone of the left lung. No pleural effusion or pneumothorax.",
     {"lung_lesion": "present", "pleural_effusion": "absent", "pneumothorax": "absent"}),
    ("Rib fracture. Left pleural thickening.", {"fracture": "present", "pleural_other": "present"}),
])
def test_read_report(text, expected):
    assert dict(findings.read_report(text)) == expected


def test_corpus_micro_and_macro():
    rows = [findings.pair_counts(findings.read_report(a), findings.read_report(r)) for a, r in [
        ("Small pleural effusion.", "Small pleural effusion."),     # effusion 1/1
        ("Cardiomegaly.", "No cardiomegaly."),                        # cardiomegaly 0 of 1 + 2 (no finding on R)
    ]]
    micro, macro = findings.corpus_f1(rows)
    # pairs: effusion A1 R1 tp1; cardiomegaly A1 R1 tp0; no finding A0 R1 -> micro 2 x 1 / 5
    assert micro == pytest.approx(2 / 5)
    assert macro == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert findings.corpus_f1([]) == (0.0, 0.0)


@pytest.mark.parametrize("weird", [None, 3, b"no effusion", ["No pneumothorax."], {"report": "No pneumothorax."},
                                   "\x00\u202e<answer>", "nan", "<answer>no" * 3000])
def test_never_raises_and_stays_in_range(weird):
    for args in ((weird, REF_EFFUSION), (REF_EFFUSION, weird)):
        res = findings.compute_score("medrl/report", *args)
        assert tuple(res) == findings.KEYS
        assert all(isinstance(v, float) and math.isfinite(v) for v in res.values())
        assert 0.0 <= res["score"] <= 1.0


def test_named_in_specs_and_keeps_the_contract(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    spec = compose.load_spec({"routes": {"medrl/report": {"findings": 0.6, "bleu": 0.3, "format": 0.1}}})
    assert "findings/pleural_effusion" in spec.keys
    res = compose.compute_score("medrl/report", "<think>x</think><answer>" + REF_EFFUSION + "</answer>",
                                REF_EFFUSION, spec=spec)
    assert res["score"] == pytest.approx(1.0) and res["findings"] == 1.0
    for target in ("findings", "custom_reward/findings_reward.py", "recipes/rewards/report.yaml"):
        report = run_check(target)
        assert report.ok, report.summary()
        assert all(u.calls >= 90 for u in report.units)


def test_explain_shows_each_observation_on_both_sides(capsys):
    from medrl.cli import main

    assert main(["reward", "explain", "--reward", "findings", "--data-source", "medrl/report",
                 "--solution", "<answer>Possible left pleural effusion. No pneumothorax.</answer>",
                 "--ground-truth", REF_EFFUSION]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "pleural_effusion uncertain present 0.5" in out
    assert "pneumothorax absent absent 1" in out and "cardiomegaly - absent 0" in out
    assert main(["reward", "explain", "--reward", "findings", "--data-source", "medrl/report",
                 "--solution", "No acute cardiopulmonary process.", "--ground-truth", REF_NORMAL]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "pneumothorax - absent (covered) 1" in out and "no_finding present present 1" in out


def test_reward_score_reads_a_rollout_file(tmp_path, capsys):
    import json

    from medrl.cli import main

    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps({"data_source": "medrl/report", "solution": a, "ground_truth": r}) + "\n"
                           for a, r, _, _ in CASES[:4]))
    out = tmp_path / "scores.jsonl"
    assert main(["reward", "score", "--reward", "findings", "--input", str(src), "--out", str(out),
                 "--histogram", str(tmp_path / "h.png")]) == 0
    scores = [json.loads(line)["findings/f1"] for line in out.read_text().splitlines()]
    assert scores == pytest.approx([c[2] for c in CASES[:4]])


def test_the_bundled_sample_reports_exercise_the_reward(repo_root):
    import json

    records = json.loads((repo_root / "examples/sample/sample.json").read_text())
    reports = [r["conversations"][1]["value"] for r in records if r["dataset"] == "mimic-cxr"]
    read = [dict(findings.read_report(t)) for t in reports]
    assert len(reports) == 12 and all(len(r) >= 4 for r in read)  # every report names four observations or more
    statuses = {s for r in read for s in r.values()}
    assert statuses == {"present", "absent", "uncertain"}
    assert sum("no_finding" in r for r in read) == 4  # the normal studies, in three phrasings
    assert any("-sided" in t for t in reports) and any("cardiac silhouette" in t for t in reports)
    assert any("No acute cardiopulmonary process." in t for t in reports)

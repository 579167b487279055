"""`medrl eval` on report rows: findings F1 per row, micro and macro over rows, beside BLEU and ROUGE-L."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image

from medrl.evaluation.eval_pipeline import RunConfig, run_eval

TRUTHS = {"r0": "Small left pleural effusion. No pneumothorax.",
          "r1": "The lungs are clear. No pleural effusion or pneumothorax.",
          "r2": "Cardiomegaly. No pneumothorax."}
ANSWERS = {"r0": "<answer>Left-sided pleural effusion. There is no pneumothorax.</answer>",  # paraphrase: 1
           "r1": "<answer>No acute cardiopulmonary process.</answer>",                    # covered: 1
           "r2": "<answer>The heart size is normal. No pneumothorax.</answer>"}             # flip


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="PNG")
    return buf.getvalue()


class Scripted:
    backend = "scripted"

    def generate(self, rows, max_new_tokens):
        return [ANSWERS[r.extra_info["id"]] for r in rows]


def test_eval_reports_findings_f1_micro_and_macro(tmp_path):
    rows = [{"data_source": "medrl/report", "ability": "report", "images": [{"bytes": _png()}],
             "prompt": [{"role": "user", "content": "<image>\nWrite the findings."}],
             "reward_model": {"style": "rule", "ground_truth": gt}, "extra_info": {"id": key, "dataset": "mimic-cxr"}}
            for key, gt in TRUTHS.items()]
    data = tmp_path / "val.parquet"
    pd.DataFrame(rows).to_parquet(data)
    cfg = RunConfig(data=str(data), out=str(tmp_path / "out"), reward="findings", batch_size=4, max_new_tokens=16,
                    progress=False)
    report = run_eval(["m"], cfg, generator_factory=lambda p: Scripted())
    recs = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    f1 = sorted(r["metrics"]["findings_f1"] for r in recs)
    # r2: answer {cardiomegaly absent, pneumothorax absent, no finding}, truth {cardiomegaly present,
    # pneumothorax absent}: 2 x 1 / (3 + 2).
    assert f1 == pytest.approx([0.4, 1.0, 1.0])
    assert all("bleu4" in r["metrics"] and "rouge_l" in r["metrics"] for r in recs)
    assert recs[0]["findings"]["answer"] == {"pleural_effusion": "present", "pneumothorax": "absent"}
    overall = report["results"]["m"]["overall"]
    # Pairs over rows: r0 2 + 2 agree 2; r1 1 + 1 (truth's absents covered) agree 1; r2 3 + 2 agree 1.
    assert overall["findings_f1_micro"] == pytest.approx(2 * 4 / 11)
    # Per observation: effusion 2x1/2, pneumothorax 2x2/4, no finding 2x1/3, cardiomegaly 0/2.
    assert overall["findings_f1_macro"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"| findings_f1_micro | {8 / 11:.3f} |" in md and "| findings_f1_macro |" in md and "| bleu4 |" in md


def test_the_eval_command_prints_findings_f1_beside_bleu(tmp_path, monkeypatch, capsys):
    from medrl.cli import main
    from medrl.evaluation import eval_pipeline

    stats = {"n": 3, "mean": 0.5}
    overall = {"score": stats, "bleu4": {"n": 3, "mean": 0.25}, "rouge_l": {"n": 3, "mean": 0.4},
               "findings_f1_micro": 8 / 11, "findings_f1_macro": 2 / 3}
    monkeypatch.setattr(eval_pipeline, "run_eval", lambda paths, cfg: {
        "models": [{"name": "m"}], "results": {"m": {"overall": overall}}})
    assert main(["eval", "m", "--data", str(tmp_path / "val.parquet"), "--out", str(tmp_path / "out")]) == 0
    assert ("m: 3 rows, reward 0.500, bleu4 0.250, rouge_l 0.400, findings_f1_micro 0.727, findings_f1_macro 0.667"
            in capsys.readouterr().out)

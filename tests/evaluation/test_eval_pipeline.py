"""`medrl eval` end to end: verl rows -> generations -> training-reward scores -> report, resume, compare."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from medrl.evaluation.rows import RowError, read_rows
from medrl.evaluation.eval_pipeline import RunConfig, run_eval

BOX1 = [0.2, 0.2, 0.5, 0.7]
BOX2 = [0.55, 0.1, 0.9, 0.4]
REPORT = "The lungs are clear. No pleural effusion or pneumothorax."


def _png(boxes) -> bytes:
    im = Image.new("RGB", (128, 96), (30, 30, 30))
    d = ImageDraw.Draw(im)
    for b in boxes:
        d.rectangle([b[0] * 128, b[1] * 96, b[2] * 128, b[3] * 96], fill=(220, 220, 220))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_rows(tmp_path, image_ref: bool = False) -> list[dict]:
    """Grounding rows (one box, two boxes, no finding) in two datasets, and report rows: verl's RL format."""
    truths = [[BOX1], [BOX1, BOX2], [], [BOX2], [BOX1], []]
    rows = []
    for i, t in enumerate(truths):
        if image_ref:
            path = tmp_path / f"img{i}.png"
            path.write_bytes(_png(t))
            images = [{"image": f"file://{path}"}]
        else:
            images = [{"bytes": _png(t)}]
        rows.append({"data_source": "medrl/grounding", "ability": "grounding",
                     "prompt": [{"role": "user", "content": "<image>\nLocate the abnormalities."}],
                     "images": images, "reward_model": {"style": "rule", "ground_truth": json.dumps(t)},
                     "extra_info": {"id": f"g{i}", "width": 128, "height": 96,
                                    "dataset": "vindr-cxr" if i % 2 else "ms-cxr"}})
    for i in range(3):
        rows.append({"data_source": "medrl/report", "ability": "report",
                     "prompt": [{"role": "user", "content": "<image>\nWrite the findings."}],
                     "images": [{"bytes": _png([])}], "reward_model": {"style": "rule", "ground_truth": REPORT},
                     "extra_info": {"id": f"r{i}", "width": 128, "height": 96, "dataset": "mimic-cxr"}})
    return rows


def write_parquet(tmp_path, rows, name="val.parquet"):
    path = tmp_path / name
    pd.DataFrame(rows).to_parquet(path)
    return path


# Known answers for each row id: perfect, half (one of two boxes), correct no finding, wrong box, swapped
# coordinates, a box on a no-finding image; reports: exact, partial, empty.
GOOD = {
    "g0": "<think>a nodule</think><answer>[0.2, 0.2, 0.5, 0.7]</answer>",
    "g1": "<think>two</think><answer>[0.2, 0.2, 0.5, 0.7]</answer>",
    "g2": "<think>clear</think><answer>No abnormalities or lesions are detected on this Chest X-ray.</answer>",
    "g3": "<think>x</think><answer>[0.0, 0.8, 0.1, 0.9]</answer>",
    "g4": "<think>x</think><answer>[0.5, 0.7, 0.2, 0.2]</answer>",
    "g5": "<think>x</think><answer>[0.1, 0.1, 0.3, 0.3]</answer>",
    "r0": f"<think>look</think><answer>{REPORT}</answer>",
    "r1": "<think>look</think><answer>The lungs are clear.</answer>",
    "r2": "",
}
WORSE = {**GOOD, "g0": "<answer>[0.6, 0.6, 0.7, 0.7]</answer>", "r0": "<answer>Heart enlarged.</answer>"}


class Scripted:
    """A generator answering from a table: the scoring and report path tested with known answers."""

    backend = "scripted"

    def __init__(self, answers, rows_by_key, fail_after: int | None = None):
        self.answers, self.rows, self.calls, self.fail_after = answers, rows_by_key, [], fail_after

    def generate(self, rows, max_new_tokens):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append([r.key for r in rows])
        return [self.answers[r.extra_info["id"]] for r in rows]


def _cfg(data, out, **kw):
    return RunConfig(data=str(data), out=str(out), batch_size=4, max_new_tokens=16, progress=False, **kw)


def test_scores_come_from_the_training_reward_and_task_metrics(tmp_path):
    from medrl.rewards import compose

    data = write_parquet(tmp_path, make_rows(tmp_path))
    rows = read_rows(data)
    gen = Scripted(GOOD, {r.key: r for r in rows})
    report = run_eval(["m"], _cfg(data, tmp_path / "out"), generator_factory=lambda p: gen)
    recs = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    by_id = {rows[r["index"]].extra_info["id"]: r for r in recs}
    for r in recs:  # the score is exactly what verl's reward function returns in training
        row = rows[r["index"]]
        want = compose.compute_score(row.data_source, GOOD[row.extra_info["id"]], row.ground_truth, row.extra_info)
        assert r["score"] == pytest.approx(want["score"])
    assert by_id["g0"]["metrics"] == {"iou": pytest.approx(1.0), "region_iou": pytest.approx(1.0), "acc@0.5": 1.0,
                                      "ap@0.5": 1.0, "area_ratio": pytest.approx(1.0)}
    assert by_id["g1"]["metrics"]["iou"] == pytest.approx(0.5) and by_id["g1"]["metrics"]["ap@0.5"] == 0.5
    # Region IoU: BOX1 (area 0.15) against the union of BOX1 and BOX2 (0.15 + 0.105, disjoint).
    assert by_id["g1"]["metrics"]["region_iou"] == pytest.approx(0.15 / 0.255)
    assert by_id["g2"]["no_finding"] and by_id["g2"]["metrics"]["ap@0.5"] == 0.0  # RadVLM rule
    assert by_id["g4"]["pred_boxes"] == [BOX1]  # swapped corners read as the same box
    assert by_id["r0"]["metrics"]["bleu4"] == pytest.approx(1.0) and by_id["r0"]["metrics"]["rouge_l"] == 1.0
    assert 0 < by_id["r1"]["metrics"]["rouge_l"] < 1 and by_id["r2"]["metrics"]["bleu1"] == 0.0

    res = report["results"]["m"]
    ground = res["by_data_source"]["medrl/grounding"]
    assert ground["score"]["n"] == 6
    # mAP@0.5 over 6 grounding rows: 1 + 0.5 + 0 + 0 + 1 + 0.
    assert ground["mAP@0.5"] == pytest.approx(2.5 / 6)
    assert ground["iou"]["n"] == 4 and ground["iou"]["mean"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert ground["acc@0.5"]["mean"] == pytest.approx(4 / 6)  # g0, g1, g2 (no finding), g4
    assert set(res["by_category"]) == {"ms-cxr", "vindr-cxr", "mimic-cxr"}
    for key in ("mean", "std", "median", "min", "max", "n"):
        assert key in res["by_category"]["ms-cxr"]["score"]
    assert res["worst"][0]["score"] <= res["best"][0]["score"]
    assert "pred_boxes" in next(e for e in res["worst"] + res["best"] if e["task"] == "grounding")

    md = (tmp_path / "out" / "report.md").read_text()
    assert "| medrl/grounding | 6 |" in md and "mAP@0.5 0.417" in md and "vindr-cxr" in md
    assert "| region_iou |" in md and "region_iou 0." in md
    # g0, g1 and g4 draw the true box exactly: the median box/true area is 1, inside [0.67, 1.5].
    assert ground["area_ratio"]["n"] == 3 and ground["area_ratio"]["median"] == pytest.approx(1.0)
    assert "| box/true area (median) | 1.00 |" in md and "- m: Box size: the model's boxes are 1.00 times" in md
    figs = {f["title"]: f["path"] for f in report["figures"]}
    for title in ("Reward histogram", "IoU distribution", "Mean reward per category"):
        assert (tmp_path / "out" / figs[title]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum("green truth" in t for t in figs) >= 2
    for f in figs.values():
        assert f"({f})" in md


def test_credit_no_finding_and_box_convention_flags(tmp_path):
    data = write_parquet(tmp_path, make_rows(tmp_path))
    rows = read_rows(data)
    gen = Scripted(GOOD, {r.key: r for r in rows})
    report = run_eval(["m"], _cfg(data, tmp_path / "o1", credit_no_finding=True), generator_factory=lambda p: gen)
    assert report["results"]["m"]["by_data_source"]["medrl/grounding"]["mAP@0.5"] == pytest.approx(3.5 / 6)
    # The same answers read as 0-1000 integers put every box near the corner: IoU collapses.
    report = run_eval(["m"], _cfg(data, tmp_path / "o2", box_convention="norm1000"), generator_factory=lambda p: gen)
    assert report["results"]["m"]["by_data_source"]["medrl/grounding"]["iou"]["mean"] == 0.0


def test_box_convention_moves_score_iou_and_map_together(tmp_path):
    """One scoring path: the convention reaches the reward through the spec; IoU and mAP use the reward's boxes."""
    data = write_parquet(tmp_path, make_rows(tmp_path)[:2])  # one true box, two true boxes
    per_mille = {"g0": "<think>x</think><answer>[200, 200, 500, 700]</answer>",
                 "g1": "<think>x</think><answer>[200, 200, 500, 700] and [550, 100, 900, 400]</answer>"}
    for conv, hit in (("norm1000", 1.0), ("norm1", 0.0)):
        report = run_eval(["m"], _cfg(data, tmp_path / conv, box_convention=conv),
                          generator_factory=lambda p: Scripted(per_mille, {}))
        ground = report["results"]["m"]["by_data_source"]["medrl/grounding"]
        assert ground["score"]["mean"] == pytest.approx(0.9 * hit + 0.1)  # 0.9 IoU + 0.1 format
        assert ground["iou"]["mean"] == pytest.approx(hit) and ground["mAP@0.5"] == pytest.approx(hit)
        recs = [json.loads(line) for line in (tmp_path / conv / "scores.jsonl").read_text().splitlines()]
        for r in recs:  # the report's IoU is the reward's IoU: the same parse
            assert r["metrics"]["iou"] == pytest.approx(r["reward"]["iou/iou"]) and r["box_convention"] == conv
            assert "bleu" not in r["reward"]  # a reward this route does not use is not reported for the row
        assert report["box_convention"] == conv
        assert (tmp_path / conv / "report.md").read_text().count("box convention") == 1


def test_resume_continues_after_an_interruption(tmp_path):
    data = write_parquet(tmp_path, make_rows(tmp_path))
    rows = read_rows(data)
    out = tmp_path / "out"
    first = Scripted(GOOD, {}, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_eval(["m"], _cfg(data, out), generator_factory=lambda p: first)
    log = out / "generations.jsonl"
    assert len(log.read_text().splitlines()) == 4  # the first batch was saved
    with open(log, "a") as fh:
        fh.write('{"key": "4:g4", "text": "trunc')  # a write torn by the kill
    second = Scripted(GOOD, {})
    report = run_eval(["m"], _cfg(data, out, resume=True), generator_factory=lambda p: second)
    done_first = set(first.calls[0])
    assert [k for batch in second.calls for k in batch] == [r.key for r in rows if r.key not in done_first]
    assert report["results"]["m"]["overall"]["score"]["n"] == len(rows)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(rec["index"] for rec in lines) == list(range(len(rows)))
    # Resuming with other decoding settings is refused instead of mixing two runs in one log.
    with pytest.raises(ValueError, match="max_new_tokens"):
        cfg = _cfg(data, out, resume=True)
        cfg.max_new_tokens = 99
        run_eval(["m"], cfg, generator_factory=lambda p: Scripted(GOOD, {}))


def test_compare_puts_two_models_side_by_side(tmp_path):
    data = write_parquet(tmp_path, make_rows(tmp_path))
    answers = {"before": WORSE, "after": GOOD}
    report = run_eval([str(tmp_path / "before"), str(tmp_path / "after")], _cfg(data, tmp_path / "cmp"),
                      generator_factory=lambda p: Scripted(answers[p.rsplit("/", 1)[-1]], {}))
    assert [m["name"] for m in report["models"]] == ["before", "after"]
    a = report["results"]["before"]["overall"]["score"]["mean"]
    b = report["results"]["after"]["overall"]["score"]["mean"]
    assert b > a
    p = report["paired"]
    assert p["b_better"] == 2 and p["a_better"] == 0 and p["ties"] == 7
    assert p["difference"]["mean"] == pytest.approx(b - a)
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| metric | before | after | B - A |" in md and "## before" in md and "## after" in md
    assert (tmp_path / "cmp" / "models" / "after" / "generations.jsonl").exists()


def test_bad_rows_name_the_file_and_row(tmp_path):
    rows = make_rows(tmp_path)
    rows[2]["prompt"] = [{"role": "user", "content": "<image><image> two placeholders"}]
    data = write_parquet(tmp_path, rows)
    with pytest.raises(RowError, match=r"val.parquet row 2: 2 <image> placeholder\(s\) .* but 1 image"):
        read_rows(data)
    rows = make_rows(tmp_path)
    for r in rows:
        r["data_source"] = "other/source"
    data = write_parquet(tmp_path, rows, "other.parquet")
    with pytest.raises(ValueError, match="no route for data_source"):
        run_eval(["m"], _cfg(data, tmp_path / "o"), generator_factory=lambda p: Scripted(GOOD, {}))
    with pytest.raises(RowError, match="no such file"):
        read_rows(tmp_path / "missing.parquet")


@pytest.mark.slow  # real generation with the tiny model, batched and one by one (about 20 s)
def test_cli_with_the_tiny_model(tmp_path, tiny_model_dir):
    """The real path: processor chat template, image refs, batched left-padded HF generate, CLI output."""
    from medrl.cli import main

    data = write_parquet(tmp_path, make_rows(tmp_path, image_ref=True))
    out = tmp_path / "out"
    argv = ["eval", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--batch-size", "3",
            "--max-new-tokens", "8", "--reward", "iou", "--limit", "5"]
    assert main(argv) == 0
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["key"] for g in gens] == [r.key for r in read_rows(data, limit=5)]
    scored = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [s["output"] for s in scored] == [g["text"] for g in gens]  # what was generated is what was scored
    meta = json.loads((out / "generations.meta.json").read_text())
    assert meta["backend"] == "transformers" and meta["max_new_tokens"] == 8
    report = json.loads((out / "report.json").read_text())
    assert report["results"][tiny_model_dir.name]["overall"]["score"]["n"] == 5
    # Batched generation equals one-by-one generation (left padding and mm_token_type_ids handled).
    from medrl.evaluation.generate import HFGenerator

    rows = read_rows(data, limit=3)
    g = HFGenerator(str(tiny_model_dir))
    assert g.generate(rows, 8) == [g.generate([r], 8)[0] for r in rows]
    # --resume with everything generated re-scores without generating.
    assert main(argv + ["--resume"]) == 0
    assert len((out / "generations.jsonl").read_text().splitlines()) == 5

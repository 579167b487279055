"""The seam between data and rewards: a row's own SFT target scores that reward's maximum for the row.

For every row of every bundled sample, and for generated LLaVA records, the converter's
SFT answer is scored by the training reward of the row's route (medrl's default spec):
IoU 1.0 for boxes, the no-finding credit (0.8) for a no-finding row, BLEU 1.0 for a
report, VQA 1.0, the change reward 1.0 for an action vector, format 1.0. A policy that
copies its SFT target is never punished by RL. A failure names the row, the reward,
the target text and the truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medrl.data.convert import ConvertOptions, convert
from medrl.data.images import ImageOptions
from medrl.data.records import RecordOptions, build_rows
from medrl.no_finding import NO_FINDING_PHRASES
from medrl.rewards import change, compose, iou

REPO = Path(__file__).resolve().parents[1]


def reward_maximum(term: str, row: dict) -> float:
    """The best score reward `term` can give this row."""
    truth = row["reward_model"]["ground_truth"]
    if term == "iou":
        return iou.NO_FINDING_SCORE if json.loads(truth) == [] else 1.0
    if term == "change":
        return change.NO_CHANGE_SCORE if json.loads(truth) == [] else 1.0
    return 1.0


def sft_targets(sft_rows: list[dict]) -> dict[tuple[str, str], list[str]]:
    """(record id, data_source) -> the SFT answers of that record, in turn order."""
    out: dict[tuple[str, str], list[str]] = {}
    for r in sft_rows:
        answers = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        out.setdefault((r["extra_info"]["id"], r["data_source"]), []).extend(answers)
    return out


def round_trip_failures(rows: list[dict], sft_rows: list[dict]) -> list[str]:
    """Every (row, reward) whose own SFT target scores below the reward's maximum, said in words."""
    targets = sft_targets(sft_rows)
    failures = []
    for row in rows:
        info = row["extra_info"]
        target = targets[(info["id"], row["data_source"])][info["turn"] - 1]
        result = compose.compute_score(row["data_source"], target, row["reward_model"]["ground_truth"], info)
        route = compose.route_for(row["data_source"])
        for term in route.terms:
            want = reward_maximum(term.name, row)
            if result[term.name] != pytest.approx(want):
                failures.append(f"{info['id']} turn {info['turn']} ({row['data_source']}): {term.name} "
                                f"{result[term.name]:.4f}, not {want}, for its SFT target {target!r} against "
                                f"the truth {row['reward_model']['ground_truth']!r}")
        best = sum(t.weight * reward_maximum(t.name, row) for t in route.terms)
        if result["score"] != pytest.approx(best):
            failures.append(f"{info['id']} ({row['data_source']}): score {result['score']}, not {best}")
    return failures


def _opts(inputs: list[Path], out: Path, task: str = "grounding", **kw) -> ConvertOptions:
    images = ImageOptions(mode="ref", image_root=kw.pop("image_root", None))
    return ConvertOptions(inputs=[str(p) for p in inputs], output_dir=str(out), workers=1, progress=False,
                          record=RecordOptions(task=task, sft=True, images=images), **kw)


def _convert_sample(name: str, out: Path) -> list[dict]:
    from medrl.data.change import ChangeOptions, prepare_change
    from medrl.data.mecovqa import prepare_mecovqa
    from medrl.data.unimedvl import prepare_unimedvl

    radvlm = REPO / "examples/sample/sample.json"
    if name == "radvlm grounding":
        return [convert(_opts([radvlm], out, dataset_filter=["vindr-cxr", "chest-imagenome"]))]
    if name == "radvlm report":
        return [convert(_opts([radvlm], out, "report", dataset_filter=["mimic-cxr"]))]
    if name == "radvlm vqa":
        return [convert(_opts([radvlm], out, "vqa", dataset_filter=["mimic-cxr-vqa"]))]
    if name == "unimedvl":
        return [prepare_unimedvl(_opts([REPO / "examples/unimedvl/unimedvl.jsonl"], out, "report"))]
    if name == "mecovqa":
        meco = REPO / "examples/mecovqa"
        return [prepare_mecovqa(_opts(sorted(meco.glob("MeCoVQA-*.json")), out, image_root=str(meco)))]
    return prepare_change(_opts([REPO / "examples/change/levir_cc_like"], out),
                          ChangeOptions(("grounding", "action", "caption")))


@pytest.mark.parametrize("sample", ["radvlm grounding", "radvlm report", "radvlm vqa", "unimedvl", "mecovqa",
                                    "change"])
def test_every_bundled_row_scores_its_maximum_on_its_own_sft_target(sample, tmp_path):
    rows, sft_rows = [], []
    for summary in _convert_sample(sample, tmp_path):
        assert summary["sft_outputs"], summary
        for path in summary["outputs"].values():
            rows += pq.read_table(path).to_pylist()
        for path in summary["sft_outputs"].values():
            sft_rows += pq.read_table(path).to_pylist()
    assert len(rows) >= 8, sample
    failures = round_trip_failures(rows, sft_rows)
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------ generated records

ABNORMALITIES = ["nodule", "mass", "effusion", "consolidation", "pneumothorax", "cardiomegaly", "opacity"]
NO_FINDING_ANSWERS = [example for _, example in NO_FINDING_PHRASES] + [
    "No abnormalities or lesions are detected on this Chest X-ray.", "Unremarkable.", "Nodule not seen.",
    "No evidence of pneumothorax", "Within normal limits", "No boxes"]
WIDTH, HEIGHT = 640, 512  # the size records state; pixel boxes are relative to it


@st.composite
def box_text(draw, pixels: bool) -> str:
    """One box as a RadVLM answer writes it: [0, 1] floats (2 to 6 decimals) or pixels of the stated size."""
    if pixels:
        x1, x2 = sorted(draw(st.lists(st.integers(0, WIDTH), min_size=2, max_size=2, unique=True)))
        y1, y2 = sorted(draw(st.lists(st.integers(0, HEIGHT), min_size=2, max_size=2, unique=True)))
        if max(x2, y2) <= 1:
            x2 = 2  # a pixel box within [0, 1] would be read as normalised
        return f"[{x1}, {y1}, {x2}, {y2}]"
    decimals = draw(st.integers(2, 6))
    grid = 10 ** decimals
    gap = max(1, grid // 5000)  # narrower than 0.0002 the stored 4 decimals make a box of zero width (rejected)
    x1, y1 = draw(st.integers(0, grid - gap)), draw(st.integers(0, grid - gap))
    x2, y2 = draw(st.integers(x1 + gap, grid)), draw(st.integers(y1 + gap, grid))
    return "[" + ", ".join(f"{v / grid:.{decimals}f}" for v in (x1, y1, x2, y2)) + "]"


@st.composite
def grounding_answer(draw) -> str:
    """A RadVLM-shaped grounding answer: findings with one or more boxes, or a no-finding statement."""
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(st.sampled_from(NO_FINDING_ANSWERS))
    pixels = draw(st.booleans())
    findings = []
    for _ in range(draw(st.integers(1, 3))):
        boxes = draw(st.lists(box_text(pixels), min_size=1, max_size=3))
        joined = boxes[0] if len(boxes) == 1 else ", ".join(boxes[:-1]) + " and " + boxes[-1]
        shape = draw(st.sampled_from(["There is {a} {x} located at the coordinates {b}",
                                      "The image shows {a} {x} located at the coordinates {b}",
                                      "This finding is located at {b} in the image"]))
        x = draw(st.sampled_from(ABNORMALITIES))
        findings.append(shape.format(a="an" if x[0] in "aeiou" else "a", x=x, b=joined))
    return "; ".join(findings) + "."


TEXT_ANSWER = st.lists(st.sampled_from(ABNORMALITIES + ["the", "left", "lung", "is", "clear", "no", "acute",
                                                        "Yes", "No", ",", ".", "-", "3 cm", "(stable)"]),
                       min_size=1, max_size=25).map(" ".join).filter(lambda t: any(c.isalnum() for c in t))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.new("L", (64, 48), 90).save(path)
    return path


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_records_score_their_maximum(image, data):
    task = data.draw(st.sampled_from(["grounding", "report", "vqa"]))
    answer = {"grounding": grounding_answer(), "report": TEXT_ANSWER, "vqa": TEXT_ANSWER.filter(
        lambda t: len(t.split()) <= 10)}[task]
    turns = []
    for k in range(data.draw(st.integers(1, 2))):
        turns += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + "What do you see?"},
                  {"from": "gpt", "value": data.draw(answer)}]
    record = {"id": "gen", "image": str(image), "width": WIDTH, "height": HEIGHT, "conversations": turns}
    opts = RecordOptions(task=task, sft=True, images=ImageOptions(mode="ref", verify=False))
    res = build_rows(record, str(image.parent / "gen.json"), 0, opts)
    rows = [replace_info(r) for r in res.rows]
    failures = round_trip_failures(rows, [replace_info(r) for r in res.sft_rows])
    assert not failures, "\n".join(failures)


def replace_info(row: dict) -> dict:
    """A row as it comes back from parquet (extra_info a plain dict), for the same lookups as the samples."""
    return {**row, "extra_info": dict(row["extra_info"])}


def test_a_broken_seam_is_named(image):
    """The property fails, naming the box, when the SFT answer and the truth disagree (as 2-decimal answers did)."""
    record = {"id": "px", "image": str(image), "width": WIDTH, "height": HEIGHT, "conversations": [
        {"from": "human", "value": "<image>\nWhere?"},
        {"from": "gpt", "value": "There is a nodule located at the coordinates [79, 43, 301, 217]."}]}
    res = build_rows(record, str(image.parent / "px.json"), 0, RecordOptions(sft=True, images=ImageOptions(
        mode="ref", verify=False)))
    assert round_trip_failures(res.rows, res.sft_rows) == []
    truth = json.loads(res.rows[0]["reward_model"]["ground_truth"])[0]
    two_decimals = "[" + ", ".join(f"{v:.2f}" for v in truth) + "]"
    sft = [{**res.sft_rows[0], "messages": res.sft_rows[0]["messages"][:-1] + [
        {"role": "assistant", "content": f"<think>x</think><answer>{two_decimals}</answer>"}]}]
    failure = round_trip_failures(res.rows, sft)[0]
    assert failure.startswith("px turn 1 (medrl/grounding): iou 0.9") and two_decimals in failure

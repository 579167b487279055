"""Every reject reason of the converter still appears, with the fast image and length paths, in both image modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from medrl import jsonl
from medrl.data import rejects
from medrl.data.convert import ConvertOptions, convert
from medrl.data.images import ImageOptions
from medrl.data.length import LengthOptions
from medrl.data.records import RecordOptions

def _rec(rid, image="img/ok.png", question="<image>\nLocate the nodule.",
         answer="There is a nodule located at the coordinates [0.1, 0.2, 0.3, 0.4].", **kw):
    rec = {"id": rid, "image": image,
           "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    rec.update(kw)
    return rec


@pytest.fixture()
def root(tmp_path) -> Path:
    img = tmp_path / "img"
    img.mkdir()
    Image.new("L", (64, 48), 40).save(img / "ok.png")
    Image.new("L", (600, 2), 40).save(img / "thin.png")  # 300:1, beyond the resize rules' 200:1
    data = (img / "ok.png").read_bytes()
    (img / "cut.png").write_bytes(data[: len(data) // 2])
    (img / "junk.png").write_bytes(b"this is not an image, whatever its name says")
    return tmp_path


def _run(root: Path, name: str, records, task="grounding", mode="embed", length=None, raw=None) -> dict:
    src = root / f"{name}.json"
    src.write_text(raw if raw is not None else json.dumps(records))
    out = root / f"out-{name}"
    s = convert(ConvertOptions(inputs=[str(src)], output_dir=str(out), progress=False, length=length or LengthOptions(),
                               record=RecordOptions(task=task, vqa_max_words=3, images=ImageOptions(mode=mode))))
    assert sum(s["rejects_by_reason"].values()) == len(jsonl.read(out / "rejects.jsonl"))
    return s["rejects_by_reason"]


@pytest.mark.parametrize("mode", ["embed", "ref"])
def test_every_record_level_reason(root, mode):
    records = [
        ["not", "an", "object"],
        {"id": "noconv", "image": "img/ok.png"},
        {"id": "badconv", "image": "img/ok.png", "conversations": "{not json"},
        _rec("noanswer") | {"conversations": [{"from": "human", "value": "<image>\nhi"}]},
        _rec("noimage", image=None),
        _rec("marks", question="<image><image>\ntwo marks, one image"),
        _rec("missing", image="img/nowhere.png"),
        _rec("cut", image="img/cut.png"),
        _rec("junk", image="img/junk.png"),
        _rec("notground", answer="I cannot tell."),
        _rec("three", answer="located at the coordinates [0.1, 0.2, 0.3]"),
        _rec("nan", answer="located at the coordinates [0.1, NaN, 0.3, 0.4]"),
        _rec("swap", answer="located at the coordinates [0.5, 0.2, 0.3, 0.4]"),
        _rec("neg", answer="located at the coordinates [-0.1, 0.2, 0.3, 0.4]"),
        _rec("outside", answer="located at the coordinates [10, 20, 300, 40]", width=100, height=100),
        _rec("good"),
    ]
    text = json.dumps(records)
    got = _run(root, f"records-{mode}", None, mode=mode, raw=text[:-1] + ', {"id": "trunc"')
    expected = {
        rejects.INVALID_JSON: 1, rejects.NOT_AN_OBJECT: 1, rejects.NO_CONVERSATIONS: 1,
        rejects.MALFORMED_CONVERSATION: 1, rejects.NO_ANSWER: 1, rejects.NO_IMAGE: 1,
        rejects.PLACEHOLDER_MISMATCH: 1, rejects.IMAGE_NOT_FOUND: 1, rejects.UNREADABLE_IMAGE: 2,
        rejects.NOT_GROUNDING: 1, "box with 3 numbers": 1, "box with NaN or infinite coordinate": 1,
        "box with x2 < x1 or y2 < y1": 1, "box with negative coordinate": 1, "box outside the image": 1,
    }
    assert got == expected  # "coordinates above 1 with no known image size": test_data_convert


def test_task_reasons(root):
    assert _run(root, "report", [_rec("empty", answer="   ")], task="report") == {rejects.EMPTY_ANSWER: 1}
    assert _run(root, "vqa", [_rec("long", answer="one two three four five")], task="vqa") == {
        rejects.VQA_TOO_LONG: 1}


@pytest.mark.parametrize("mode", ["embed", "ref"])
def test_length_reasons_with_the_fast_counter(root, tiny_model_dir, mode):
    long_q = "<image>\nLocate the nodule. " + "Describe everything you see in great detail. " * 40
    records = [_rec("short"), _rec("long", question=long_q), _rec("thin", image="img/thin.png")]
    chars = _run(root, f"chars-{mode}", records, mode=mode, length=LengthOptions(max_prompt_chars=500))
    assert chars == {rejects.PROMPT_TOO_LONG_CHARS: 1}
    tokens = _run(root, f"tokens-{mode}", records, mode=mode,
                  length=LengthOptions(processor=str(tiny_model_dir), max_prompt_tokens=300))
    assert tokens == {rejects.PROMPT_TOO_LONG_TOKENS: 1, rejects.LENGTH_ERROR: 1}


def test_the_reason_list_is_the_one_tested():
    """A reason added to or dropped from rejects.py must be added to or dropped from these tests."""
    names = {v for k, v in vars(rejects).items() if k.isupper() and isinstance(v, str)}
    assert names == {rejects.INVALID_JSON, rejects.NOT_AN_OBJECT, rejects.NO_CONVERSATIONS,
                     rejects.MALFORMED_CONVERSATION, rejects.NO_ANSWER, rejects.EMPTY_ANSWER, rejects.NO_IMAGE,
                     rejects.PLACEHOLDER_MISMATCH, rejects.IMAGE_NOT_FOUND, rejects.UNREADABLE_IMAGE,
                     rejects.NOT_GROUNDING, rejects.VQA_TOO_LONG, rejects.PROMPT_TOO_LONG_CHARS,
                     rejects.PROMPT_TOO_LONG_TOKENS, rejects.LENGTH_ERROR}

"""LLaVA record -> verl rows: tasks, turn policies, placeholders, boxes and their reject reasons."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from medrl.data import rejects
from medrl.data.images import ImageOptions, load_image
from medrl.data.records import RecordOptions, build_rows
from medrl.data.rejects import RejectError


@pytest.fixture()
def png(tmp_path):
    def make(name="a.png", size=(100, 50)):
        path = tmp_path / name
        Image.new("L", size, 40).save(path)
        return path
    return make


def rec(answer, image="a.png", question="<image>\nWhere is the nodule?", **extra):
    return {"id": "r1", "image": image, "dataset": "vindr-cxr",
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **extra}


def build(data, tmp_path, **kw):
    return build_rows(data, str(tmp_path / "in.json"), 7, RecordOptions(**kw))


def test_grounding_row_has_verl_fields_and_normalised_truth(png, tmp_path):
    png()
    res = build(rec("There is a nodule located at the coordinates [0.12, 0.34, 0.56, 0.78] and "
                    "[0.6, 0.1, 0.7, 0.2]; a mass located at the coordinates [0.2, 0.2, 0.3, 0.3]."), tmp_path)
    (row,) = res.rows
    assert row["data_source"] == "medrl/grounding" and row["ability"] == "grounding"
    assert json.loads(row["reward_model"]["ground_truth"]) == [[0.12, 0.34, 0.56, 0.78], [0.6, 0.1, 0.7, 0.2],
                                                              [0.2, 0.2, 0.3, 0.3]]
    assert row["reward_model"]["style"] == "rule"
    assert [m["role"] for m in row["prompt"]] == ["user"]
    content = row["prompt"][0]["content"]
    assert content.startswith("<image>\nWhere is the nodule?") and "<answer>" in content and "[0, 1]" in content
    assert content.count("<image>") == len(row["images"]) == 1
    assert row["images"][0]["bytes"][:4] == b"\x89PNG"
    info = row["extra_info"]
    assert (info["id"], info["dataset"], info["width"], info["height"], info["position"]) == ("r1", "vindr-cxr",
                                                                                             100, 50, 7)


def test_no_finding_answer_is_an_empty_box_list(png, tmp_path):
    png()
    (row,) = build(rec("No abnormalities or lesions are detected on this Chest X-ray."), tmp_path).rows
    assert row["reward_model"]["ground_truth"] == "[]"


def test_answer_without_box_or_no_finding_is_rejected_for_grounding(png, tmp_path):
    png()
    with pytest.raises(RejectError) as e:
        build(rec("The heart is enlarged."), tmp_path)
    assert e.value.reason == rejects.NOT_GROUNDING


@pytest.mark.parametrize("answer, reason", [
    ("located at [0.1, 0.2, 0.3]", "box with 3 numbers"),
    ("located at [0.1, NaN, 0.3, 0.4]", "box with NaN or infinite coordinate"),
    ("located at [0.5, 0.2, 0.3, 0.4]", "box with x2 < x1 or y2 < y1"),
])
def test_malformed_boxes_reject_with_their_reason(png, tmp_path, answer, reason):
    png()
    with pytest.raises(RejectError) as e:
        build(rec(answer), tmp_path)
    assert e.value.reason == reason


def test_pixel_boxes_use_the_image_size_then_the_record_size(png, tmp_path):
    png(size=(200, 100))
    (row,) = build(rec("located at [20, 10, 100, 50]"), tmp_path).rows
    assert json.loads(row["reward_model"]["ground_truth"]) == [[0.1, 0.1, 0.5, 0.5]]
    (row,) = build(rec("located at [20, 10, 100, 50]", width=400, height=200), tmp_path).rows
    assert json.loads(row["reward_model"]["ground_truth"]) == [[0.05, 0.05, 0.25, 0.25]]
    assert row["extra_info"]["width"] == 200  # extra_info keeps the image's own size


def test_coordinates_above_one_without_any_size_are_rejected(png, tmp_path):
    png()
    opts = ImageOptions(mode="ref", verify=False)  # size unknown: the image is never opened
    with pytest.raises(RejectError) as e:
        build(rec("located at [20, 10, 100, 50]"), tmp_path, images=opts)
    assert e.value.reason == "coordinates above 1 with no known image size"


def _multi(tmp_path):
    return {"id": "m", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nLocate the nodule."}, {"from": "gpt", "value": "at [0.1, 0.1, 0.2, 0.2]"},
        {"from": "human", "value": "And the mass?"}, {"from": "gpt", "value": "at [0.5, 0.5, 0.7, 0.8]"},
        {"from": "human", "value": "Anything else?"}, {"from": "gpt", "value": "No other findings."}]}


def test_expand_makes_one_row_per_answer_with_earlier_turns_as_context(png, tmp_path):
    png()
    res = build(_multi(tmp_path), tmp_path, turns="expand")
    assert [r["extra_info"]["turn"] for r in res.rows] == [1, 2, 3]
    assert [len(r["prompt"]) for r in res.rows] == [1, 3, 5]
    assert [r["reward_model"]["ground_truth"] for r in res.rows] == ["[[0.1,0.1,0.2,0.2]]", "[[0.5,0.5,0.7,0.8]]",
                                                                     "[]"]
    # context answers are shown in the answer format the instruction asks for
    assert res.rows[1]["prompt"][1]["content"].startswith("<think>")
    assert all(r["prompt"][0]["content"].count("<image>") == 1 for r in res.rows)
    assert not res.dropped


def test_last_and_first_policies(png, tmp_path):
    png()
    (last,) = build(_multi(tmp_path), tmp_path, turns="last").rows
    assert last["extra_info"]["turn"] == 3 and len(last["prompt"]) == 5
    first = build(_multi(tmp_path), tmp_path, turns="first")
    (row,) = first.rows
    assert row["extra_info"]["turn"] == 1 and len(row["prompt"]) == 1
    assert first.dropped == {"later turn dropped by --turns first": 2}


def test_trailing_question_is_counted_as_dropped(png, tmp_path):
    png()
    data = rec("at [0.1, 0.1, 0.2, 0.2]")
    data["conversations"].append({"from": "human", "value": "thanks"})
    res = build(data, tmp_path)
    assert len(res.rows) == 1 and res.dropped == {"trailing question without answer": 1}


def test_missing_placeholder_is_added_and_wrong_count_is_rejected(png, tmp_path):
    png()
    (row,) = build(rec("at [0.1, 0.1, 0.2, 0.2]", question="Where?"), tmp_path).rows
    assert row["prompt"][0]["content"].startswith("<image>\nWhere?")
    with pytest.raises(RejectError) as e:
        build(rec("at [0.1, 0.1, 0.2, 0.2]", question="<image><image> Where?"), tmp_path)
    assert e.value.reason == rejects.PLACEHOLDER_MISMATCH


@pytest.mark.parametrize("data, reason", [
    ({"id": "x", "image": "a.png"}, rejects.NO_CONVERSATIONS),
    ({"id": "x", "image": "a.png", "conversations": []}, rejects.NO_CONVERSATIONS),
    ({"id": "x", "image": "a.png", "conversations": [{"from": "robot", "value": "hi"}]},
     rejects.MALFORMED_CONVERSATION),
    ({"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "<image>hi"}]}, rejects.NO_ANSWER),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "No finding."}]},
     rejects.NO_IMAGE),
    ({"id": "x", "image": "nope.png",
      "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "No finding."}]},
     rejects.IMAGE_NOT_FOUND),
    (["not", "a", "dict"], rejects.NOT_AN_OBJECT),
])
def test_structural_problems_have_reasons(png, tmp_path, data, reason):
    png()
    with pytest.raises(RejectError) as e:
        build(data, tmp_path)
    assert e.value.reason == reason


def test_corrupt_png_is_unreadable(tmp_path):
    good = tmp_path / "g.png"
    Image.new("L", (64, 64), 10).save(good)
    (tmp_path / "bad.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(RejectError) as e:
        load_image("bad.png", ImageOptions(), str(tmp_path))
    assert e.value.reason == rejects.UNREADABLE_IMAGE and "bad.png" in e.value.detail


def test_an_unidentifiable_image_is_named_without_a_memory_address(tmp_path):
    # PIL says "cannot identify image file <_io.BytesIO object at 0x7f...>": the same reject must
    # read the same in every run of a report.
    (tmp_path / "junk.png").write_bytes(b"not an image at all" * 4)
    with pytest.raises(RejectError) as e:
        load_image("junk.png", ImageOptions(), str(tmp_path))
    assert e.value.reason == rejects.UNREADABLE_IMAGE
    assert "junk.png" in e.value.detail and "cannot identify image file the image bytes" in e.value.detail
    assert " at 0x" not in e.value.detail


def test_report_and_vqa_truths_are_the_reference_text(png, tmp_path):
    png()
    (row,) = build(rec("  The lungs are clear.  ", question="<image>\nWrite the report."), tmp_path,
                   task="report").rows
    assert row["reward_model"]["ground_truth"] == "The lungs are clear."
    assert row["data_source"] == "medrl/report"
    (row,) = build(rec("Yes."), tmp_path, task="vqa", data_source="my/vqa").rows
    assert row["reward_model"]["ground_truth"] == "Yes." and row["data_source"] == "my/vqa"
    with pytest.raises(RejectError) as e:
        build(rec("a b c d e f g h i j k l"), tmp_path, task="vqa")
    assert e.value.reason == rejects.VQA_TOO_LONG


def test_instruction_can_be_turned_off_and_sft_rows_carry_the_whole_chat(png, tmp_path):
    png()
    res = build(_multi(tmp_path), tmp_path, instruction=False, sft=True)
    assert res.rows[0]["prompt"][0]["content"] == "<image>\nLocate the nodule."
    (sft,) = res.sft_rows
    assert [m["role"] for m in sft["messages"]] == ["user", "assistant"] * 3
    assert sft["messages"][1]["content"] == "at [0.10, 0.10, 0.20, 0.20]"  # boxes rewritten in [0, 1]
    res = build(_multi(tmp_path), tmp_path, sft=True)
    assert res.sft_rows[0]["messages"][1]["content"].startswith("<think>")
    assert res.sft_rows[0]["messages"][1]["content"].endswith("<answer>at [0.10, 0.10, 0.20, 0.20]</answer>")
    res = build(_multi(tmp_path), tmp_path, sft=True, sft_think="")  # "" is an empty think, not the default
    assert res.sft_rows[0]["messages"][1]["content"].startswith("<think></think><answer>")


def test_ref_mode_writes_file_uri_with_pixel_bounds(png, tmp_path):
    path = png()
    opts = ImageOptions(mode="ref", max_pixels=5000, min_pixels=100)
    (row,) = build(rec("No finding."), tmp_path, images=opts).rows
    assert row["images"] == [{"image": path.resolve().as_uri(), "min_pixels": 100, "max_pixels": 5000}]


def test_embed_mode_downscales_to_the_pixel_budget(png, tmp_path):
    png(size=(400, 300))
    info = load_image("a.png", ImageOptions(max_pixels=10_000), str(tmp_path))
    small = Image.open(__import__("io").BytesIO(info.payload["bytes"]))
    assert small.width * small.height <= 10_000 and abs(small.width / small.height - 4 / 3) < 0.05
    assert (info.width, info.height) == (400, 300)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "I;16", "1"])
def test_fast_png_check_agrees_with_pil_on_valid_files(mode):
    import io

    from medrl.data.images import png_size_checked

    buf = io.BytesIO()
    Image.new(mode, (37, 19)).save(buf, format="PNG")
    assert png_size_checked(buf.getvalue()) == (37, 19)


def test_fast_png_check_catches_damage_and_defers_interlaced_to_pil():
    import io

    from medrl.data.images import png_size_checked

    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).save(buf, format="PNG")
    data = buf.getvalue()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    for damaged in (data[: len(data) - 20], bytes(flipped), data[:40]):
        with pytest.raises(ValueError):
            png_size_checked(damaged)
    import zlib

    ihdr = bytearray(data[:33])
    ihdr[28] = 1  # IHDR's interlace byte (PIL writes no interlaced PNGs, so patch one)
    ihdr[29:33] = zlib.crc32(bytes(ihdr[12:29])).to_bytes(4, "big")
    assert png_size_checked(bytes(ihdr) + data[33:]) is None  # left to PIL's decoder


def test_two_images_get_two_placeholders_and_data_uris_are_read(png, tmp_path):
    import base64

    path = png(size=(20, 10))
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    data = rec("No finding.", question="Compare the two studies.")
    data.pop("image")
    data["images"] = ["a.png", uri]
    (row,) = build(data, tmp_path).rows
    assert row["prompt"][0]["content"].startswith("<image><image>\nCompare")
    assert [i["bytes"] for i in row["images"]] == [path.read_bytes()] * 2

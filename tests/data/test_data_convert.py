"""The conversion pipeline end to end: every bad record counted once with its reason, nothing else lost."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from medrl import jsonl
from medrl.data.convert import ConvertOptions, StrictFailure, convert, val_score
from medrl.data.images import ImageOptions
from medrl.data.records import RecordOptions


def _png(path: Path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 30).save(path)


def _rec(i, answer="There is a nodule located at the coordinates [0.1, 0.2, 0.3, 0.4].", image=None, **kw):
    return {"id": f"g{i}", "image": image or f"img/{i}.png", "dataset": kw.pop("dataset", "vindr-cxr"),
            "conversations": [{"from": "human", "value": "<image>\nLocate the nodule."},
                              {"from": "gpt", "value": answer}], **kw}


@pytest.fixture()
def bad_corpus(tmp_path):
    """Ten good records, one of each bad kind, and a JSON array truncated inside its last record."""
    root = tmp_path / "data"
    good = [_rec(i) for i in range(10)]
    for i in range(10):
        _png(root / f"img/{i}.png")
    _png(root / "img/corrupt_src.png")
    (root / "img/corrupt.png").write_bytes((root / "img/corrupt_src.png").read_bytes()[:70])
    bad = [
        {"id": "b-noconv", "image": "img/0.png"},
        _rec("b-missing", image="img/does_not_exist.png"),
        _rec("b-corrupt", image="img/corrupt.png"),
        _rec("b-three", image="img/0.png", answer="located at the coordinates [0.1, 0.2, 0.3]"),
        _rec("b-nan", image="img/0.png", answer="located at the coordinates [0.1, NaN, 0.3, 0.4]"),
        _rec("b-swap", image="img/0.png", answer="located at the coordinates [0.5, 0.2, 0.3, 0.4]"),
    ]
    records = good[:5] + bad + good[5:]
    text = json.dumps(records + [_rec("b-trunc")], indent=1)
    text = text[: text.rindex('"id": "gb-trunc"') + 8]  # cut inside the last record
    path = root / "all_train_llava.json"
    path.write_text(text)
    return path


EXPECTED = {
    "invalid JSON": 1,
    "no conversations": 1,
    "image not found": 1,
    "unreadable image": 1,
    "box with 3 numbers": 1,
    "box with NaN or infinite coordinate": 1,
    "box with x2 < x1 or y2 < y1": 1,
}


@pytest.mark.parametrize("workers", [1, 2])
def test_each_bad_record_is_counted_once_and_every_good_one_written(bad_corpus, tmp_path, workers):
    out = tmp_path / f"out{workers}"
    s = convert(ConvertOptions(inputs=[str(bad_corpus)], output_dir=str(out), workers=workers, progress=False))
    assert s["rejects_by_reason"] == EXPECTED
    assert s["rejected"] == 7 and s["records_converted"] == 10 and s["records_read"] == 17
    table = pq.read_table(out / "train.parquet")
    assert sorted(r["id"] for r in table.column("extra_info").to_pylist()) == sorted(f"g{i}" for i in range(10))
    assert [r["index"] for r in table.column("extra_info").to_pylist()] == list(range(10))
    rej = jsonl.read(out / "rejects.jsonl")
    assert {r["reason"] for r in rej} == set(EXPECTED)
    by_reason = {r["reason"]: r for r in rej}
    assert by_reason["invalid JSON"]["offset"] == bad_corpus.stat().st_size
    assert by_reason["unreadable image"]["id"] == "gb-corrupt"
    assert by_reason["box with 3 numbers"]["position"] == 8
    saved = json.loads((out / "summary.json").read_text())
    assert saved["rejects_by_reason"] == EXPECTED and saved["rows_written"] == {"train": 10}


def test_pixel_box_without_any_known_size_is_its_own_reason(tmp_path):
    _png(tmp_path / "img/0.png")
    _png(tmp_path / "img/1.png")
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_rec(0), _rec(1, answer="located at the coordinates [12, 8, 40, 30]")]))
    opts = ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / "o"), progress=False,
                          record=RecordOptions(images=ImageOptions(mode="ref", verify=False)))
    s = convert(opts)
    assert s["rejects_by_reason"] == {"coordinates above 1 with no known image size": 1}
    assert s["rows_written"] == {"train": 1}


def test_strict_fails_and_publishes_no_parquet(bad_corpus, tmp_path):
    out = tmp_path / "strict"
    s = convert(ConvertOptions(inputs=[str(bad_corpus)], output_dir=str(out), strict=True, progress=False))
    assert s["strict_failure"] and s["rejected"] == 7
    assert not (out / "train.parquet").exists()
    assert (out / "rejects.jsonl").exists() and (out / "summary.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def _corpus(tmp_path, n=60):
    for i in range(3):
        _png(tmp_path / f"img/{i}.png")
    recs = [_rec(i, image=f"img/{i % 3}.png", dataset=("vindr-cxr" if i % 2 else "mimic-cxr")) for i in range(n)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(recs))
    return path


def _ids(path):
    return [r["id"] for r in pq.read_table(path).column("extra_info").to_pylist()]


def test_val_split_is_a_stable_function_of_the_record_id(tmp_path):
    path = _corpus(tmp_path)
    a = convert(ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / "a"), val_fraction=0.3, progress=False))
    b = convert(ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / "b"), val_fraction=0.3, shuffle=True,
                               seed=7, progress=False))
    val_a, val_b = set(_ids(tmp_path / "a/val.parquet")), set(_ids(tmp_path / "b/val.parquet"))
    assert val_a == val_b == {f"g{i}" for i in range(60) if val_score(f"g{i}") < 0.3}
    assert 5 < len(val_a) < 35 and a["rows_written"]["train"] + a["rows_written"]["val"] == 60
    assert b["rows_written"] == a["rows_written"]
    assert set(_ids(tmp_path / "a/train.parquet")).isdisjoint(val_a)
    assert {r["split"] for r in pq.read_table(tmp_path / "a/val.parquet").column("extra_info").to_pylist()} == {"val"}


def test_dataset_filter_limit_and_seeded_sample(tmp_path):
    path = _corpus(tmp_path)
    s = convert(ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / "f"), dataset_filter=["vindr-cxr"],
                               progress=False))
    assert s["rows_written"] == {"train": 30} and s["records_filtered"] == {"dataset_filter": 30}
    s = convert(ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / "l"), limit=7, progress=False))
    assert _ids(tmp_path / "l/train.parquet") == [f"g{i}" for i in range(7)]
    picks = []
    for run, seed in (("s1", 3), ("s2", 3), ("s3", 4)):
        convert(ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / run), limit=10, shuffle=True, seed=seed,
                               progress=False))
        picks.append(_ids(tmp_path / f"{run}/train.parquet"))
    assert picks[0] == picks[1] and len(picks[0]) == 10 and len(set(picks[0])) == 10
    assert set(picks[0]) != set(picks[2])
    assert picks[0] != sorted(picks[0], key=lambda x: int(x[1:]))  # the order is shuffled too


def test_split_name_and_sft_outputs(tmp_path):
    path = _corpus(tmp_path, n=8)
    s = convert(ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / "o"), split_name="test",
                               record=RecordOptions(sft=True), progress=False))
    assert s["rows_written"] == {"test": 8} and s["sft_rows_written"] == {"test": 8}
    assert (tmp_path / "o/test.parquet").exists() and (tmp_path / "o/sft_test.parquet").exists()
    assert (tmp_path / "o/test_summary.json").exists()
    assert pq.read_schema(tmp_path / "o/sft_test.parquet").names[:2] == ["messages", "images"]


def test_char_limit_rejects_long_prompts(tmp_path):
    path = _corpus(tmp_path, n=4)
    from medrl.data.length import LengthOptions

    s = convert(ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / "o"), progress=False,
                               length=LengthOptions(max_prompt_chars=20)))
    assert s["rejects_by_reason"] == {"prompt over the character limit": 4}
    # A record whose every row the length filter removed is rejected, not converted.
    assert s["records_converted"] == 0 and s["rows_written"] == {"train": 0}


def test_a_record_keeps_counting_as_converted_while_one_of_its_rows_is_written(tmp_path):
    from medrl.data.length import LengthOptions

    _png(tmp_path / "img/0.png")
    long_q = "Locate the nodule. " * 20
    rec = _rec(0, image="img/0.png")
    rec["conversations"] += [{"from": "human", "value": long_q}, {"from": "gpt", "value": rec["conversations"][1]["value"]}]
    (tmp_path / "d.json").write_text(json.dumps([rec, _rec(1, image="img/0.png")]))
    s = convert(ConvertOptions(inputs=[str(tmp_path / "d.json")], output_dir=str(tmp_path / "o"), progress=False,
                               length=LengthOptions(max_prompt_chars=700)))
    assert s["rows_written"] == {"train": 2} and s["rejected"] == 1  # turn 2 of g0 is too long
    assert s["records_converted"] == 2


def test_seeded_sample_is_the_same_wherever_the_data_lies(tmp_path):
    path = _corpus(tmp_path)
    elsewhere = tmp_path / "some" / "other" / "folder"
    elsewhere.mkdir(parents=True)
    (elsewhere / "img").symlink_to(tmp_path / "img")
    moved = elsewhere / "renamed.json"
    moved.write_bytes(path.read_bytes())
    picks = []
    for src, run in ((path, "a"), (moved, "b")):
        convert(ConvertOptions(inputs=[str(src)], output_dir=str(tmp_path / run), limit=10, shuffle=True, seed=5,
                               progress=False))
        picks.append(sorted(_ids(tmp_path / f"{run}/train.parquet")))
    assert picks[0] == picks[1] and len(picks[0]) == 10


def test_worker_processes_give_the_same_rows_in_the_same_order(tmp_path):
    from medrl.data import chunks as chunks_mod

    n = (chunks_mod.INLINE_CHUNKS + 3) * chunks_mod.CHUNK  # enough to start the worker pool
    path = _corpus(tmp_path, n=n)
    for w in (1, 2):
        convert(ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / f"w{w}"), workers=w, val_fraction=0.2,
                               progress=False))
    for name in ("train.parquet", "val.parquet"):
        a, b = pq.read_table(tmp_path / "w1" / name), pq.read_table(tmp_path / "w2" / name)
        assert a.equals(b) and a.num_rows > 0


def test_llava_parquet_with_embedded_image_structs(tmp_path):
    import io

    import pyarrow as pa

    buf = io.BytesIO()
    Image.new("L", (32, 16), 99).save(buf, format="PNG")
    png = buf.getvalue()
    recs = [{"id": f"p{i}", "image": {"bytes": png, "path": None}, "dataset": "vindr-cxr",
             "conversations": [{"from": "human", "value": "<image>\nWhere?"},
                               {"from": "gpt", "value": "located at [4, 2, 16, 8]"}]} for i in range(3)]
    src = tmp_path / "llava.parquet"
    pq.write_table(pa.Table.from_pylist(recs), src)
    s = convert(ConvertOptions(inputs=[str(src)], output_dir=str(tmp_path / "o"), progress=False))
    assert s["rejected"] == 0
    rows = pq.read_table(tmp_path / "o/train.parquet").to_pylist()
    assert [r["images"][0]["bytes"] == png for r in rows] == [True] * 3
    assert json.loads(rows[0]["reward_model"]["ground_truth"]) == [[0.125, 0.125, 0.5, 0.5]]  # pixels of 32x16


@pytest.mark.parametrize("raised,published", [(None, True), (KeyError, False), (StrictFailure, True)])
def test_reject_log_is_published_on_success_and_on_kept_exceptions(tmp_path, raised, published):
    from medrl.data.rejects import Reject, RejectLog

    path = tmp_path / "rejects.jsonl"
    try:
        with RejectLog(path, keep_on=(StrictFailure,)) as log:
            log.add(Reject("bad", "detail", "f.json", 3, "r3"))
            if raised:
                raise raised("stop")
    except (KeyError, StrictFailure) as exc:
        assert type(exc) is raised  # the exception still propagates
    assert [f.name for f in tmp_path.iterdir()] == (["rejects.jsonl"] if published else [])  # no temp file left
    if published:
        assert [r["id"] for r in jsonl.read(path)] == ["r3"]


def test_ref_mode_remembers_a_files_verdict_for_one_run_only(tmp_path):
    _png(tmp_path / "img/0.png")
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_rec(0), _rec(1, image="img/0.png")]))

    def run(out):
        return convert(ConvertOptions(inputs=[str(path)], output_dir=str(tmp_path / out), progress=False,
                                      record=RecordOptions(images=ImageOptions(mode="ref"))))

    assert run("a")["rows_written"] == {"train": 2}
    (tmp_path / "img/0.png").write_bytes(b"not an image")  # replaced between two runs of one process
    s = run("b")
    assert s["rejected"] == 2 and "rows_written" in s and not s["rows_written"].get("train")

"""Worker processes that read the input themselves (medrl.data.shards): one process's outputs, failures that stop the run."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from medrl.data.convert import ConvertOptions, convert
from medrl.data.images import ImageOptions
from medrl.data.records import RecordOptions, build_source_rows
from medrl.data.shards import WorkerFailed

N = 700  # past several chunks of either size, so every worker builds some


def _rec(i: int, answer: str = "There is a nodule located at the coordinates [0.1, 0.2, 0.3, 0.4].", **kw) -> dict:
    return {"id": f"g{i}", "image": f"img/{i % 5}.png", "dataset": "vindr-cxr" if i % 3 else "mimic-cxr",
            "conversations": [{"from": "human", "value": "<image>\nLocate the nodule."},
                              {"from": "gpt", "value": answer}], **kw}


@pytest.fixture()
def corpus(tmp_path) -> list[Path]:
    """A JSON array with bad records spread through it, and JSON Lines with a broken line mid-file."""
    (tmp_path / "img").mkdir()
    for k in range(5):
        Image.new("L", (40 + k, 30), 20 * k).save(tmp_path / "img" / f"{k}.png")
    recs = [_rec(i) for i in range(N)]
    for i in range(3, N, 97):
        recs[i] = _rec(i, answer="located at the coordinates [0.5, 0.2, 0.3, 0.4]")  # x2 < x1: rejected
    for i in range(11, N, 131):
        recs[i] = {"id": f"g{i}", "image": "img/0.png"}  # no conversations
    (tmp_path / "a.json").write_text(json.dumps(recs))
    lines = [json.dumps(_rec(N + i)) for i in range(300)]
    lines[150] = "{broken"  # the reader's reject, with the builder's rejects just after it in the same chunk
    lines[151:155] = [json.dumps({"id": f"late{i}", "image": "img/1.png"}) for i in range(4)]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    return [tmp_path / "a.json", tmp_path / "b.jsonl"]


def _run(corpus: list[Path], out: Path, workers: int, **kw) -> dict:
    return convert(ConvertOptions(inputs=[str(p) for p in corpus], output_dir=str(out), workers=workers,
                                  progress=False, **kw))


SAME = ("records_read", "records_converted", "records_filtered", "rows_written", "rejected", "rejects_by_reason")


@pytest.mark.parametrize("kw", [
    {},
    {"record": RecordOptions(images=ImageOptions(mode="ref"))},
    {"dataset_filter": ["vindr-cxr"], "limit": 500},
    {"split_name": "test", "record": RecordOptions(sft=True)},
], ids=["embed", "ref", "filter-limit", "split-name-sft"])
def test_two_workers_write_the_one_process_files_byte_for_byte(corpus, tmp_path, kw):
    one, two = _run(corpus, tmp_path / "w1", 1, **kw), _run(corpus, tmp_path / "w2", 2, **kw)
    assert {k: one[k] for k in SAME} == {k: two[k] for k in SAME}
    assert one["rejected"] >= 5 and one["records_converted"] >= 480
    names = sorted(p.name for p in (tmp_path / "w1").iterdir() if p.suffix in (".parquet", ".jsonl"))
    assert names == sorted(p.name for p in (tmp_path / "w2").iterdir() if p.suffix in (".parquet", ".jsonl"))
    for name in names:  # rows, row groups and the order of the rejects, the reader's "{broken" line among them
        a, b = (tmp_path / "w1" / name).read_bytes(), (tmp_path / "w2" / name).read_bytes()
        assert a.replace(b"/w1/", b"/w2/") == b, name
    (rejects_file,) = [n for n in names if n.endswith("rejects.jsonl")]
    rejects = [json.loads(x) for x in (tmp_path / "w2" / rejects_file).read_text().splitlines()]
    places = [([str(p) for p in corpus].index(r["source"]), r["position"]) for r in rejects]
    assert places == sorted(places)  # the reader's "{broken" among the builder's, in input order
    assert not mp.active_children()


def _raising_builder(item, opts, bad_id):
    if item.data.get("id") == bad_id:
        raise RuntimeError(f"a bug met at {bad_id}")
    return build_source_rows(item, opts)


def _dying_builder(item, opts, bad_id):
    if item.data.get("id") == bad_id:
        os._exit(3)
    return build_source_rows(item, opts)


@pytest.mark.parametrize("builder, words", [
    (_raising_builder, r"conversion worker \d failed:\n(.|\n)*RuntimeError: a bug met at g400"),
    (_dying_builder, r"conversion worker \d exited with code 3 before sending its next chunk"),
])
def test_a_worker_that_raises_or_dies_stops_the_run_with_its_reason(corpus, tmp_path, builder, words):
    opts = ConvertOptions(inputs=[str(corpus[0])], output_dir=str(tmp_path / "o"), workers=2, progress=False,
                          builder=partial(builder, opts=RecordOptions(), bad_id="g400"))
    with pytest.raises(WorkerFailed, match=words):
        convert(opts)
    assert not mp.active_children()  # the other worker was ended too
    assert not (tmp_path / "o" / "train.parquet").exists()  # nothing half-written was published


def test_the_last_chunk_carries_what_came_after_the_last_record(corpus, tmp_path):
    """A limit reached early: the records after it are read and counted, by the worker that owns the last chunk."""
    s = _run(corpus[:1], tmp_path / "o", 2, limit=3)
    assert s["records_converted"] == 3 and s["records_read"] == N
    assert s["records_filtered"] == {"over --limit": N - 3}

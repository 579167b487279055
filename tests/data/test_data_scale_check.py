"""`medrl check`'s fast path: the same problems as the full verl load, and a proof that fails when counts differ."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from medrl.data import check as C
from medrl.data import check_fast
from medrl.data.length import count_prompt_tokens, load_processor
from medrl.data.writer import RowGroupWriter, rl_schema


def _png(size=(90, 70)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 80).save(buf, format="PNG")
    return buf.getvalue()


def _row(i: int, image: dict, question: str = "<image>\nLocate the nodule.", **kw) -> dict:
    return {
        "data_source": kw.pop("data_source", "medrl/grounding"),
        "prompt": [{"role": "user", "content": question}],
        "images": [image] if image else [],
        "ability": "grounding",
        "reward_model": {"style": "rule", "ground_truth": kw.pop("truth", "[[0.1,0.2,0.3,0.4]]")},
        "extra_info": {"index": i, "id": f"r{i}"},
    }


@pytest.fixture()
def ref_rows(tmp_path) -> list[dict]:
    """Ref-mode rows over image files of several sizes; one file truncated, one missing."""
    rows = []
    for i in range(24):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(_png((40 + 13 * i, 300 - 9 * i)))
        rows.append(_row(i, {"image": p.as_uri(), "min_pixels": 3136, "max_pixels": 12544 * (1 + i % 3)},
                         question="<image>\n" + "Locate the nodule. " * (1 + i % 5)))
    data = (tmp_path / "img3.png").read_bytes()
    (tmp_path / "img3.png").write_bytes(data[: len(data) // 2])  # lost its second half
    rows[5]["images"][0]["image"] = (tmp_path / "nowhere.png").as_uri()
    rows[7]["reward_model"]["ground_truth"] = "[[0.1,0.2,0.3]]"
    rows[9]["data_source"] = "nobody/knows"
    rows[11]["prompt"][0]["content"] = "<image><image>two marks, one image"
    return rows


def _write(rows: list[dict], path: Path, mode: str = "ref") -> Path:
    with RowGroupWriter(path, rl_schema(mode), row_group_size=5) as w:  # several row groups: units of work
        for row in rows:
            w.write(row)
    return path


def _shape(report: dict) -> dict:
    return {name: (p["count"], sorted(p["rows"])) for name, p in report["problems"].items()}


@pytest.mark.slow  # full verl loads / worker processes
def test_fast_check_finds_what_the_full_verl_load_finds(ref_rows, tiny_model_dir, tmp_path):
    path = _write(ref_rows, tmp_path / "rows.parquet")
    proc = str(tiny_model_dir)
    full = C.check_file(path, processor=proc, max_prompt_length=60, progress=False, full=True)
    fast = C.check_file(path, processor=proc, max_prompt_length=60, progress=False, verify=5)
    assert fast["mode"] == "fast" and full["mode"] == "full"
    assert _shape(fast) == _shape(full)
    shape = _shape(fast)
    assert shape[C.P_IMAGE][1] == [3, 5] and shape[C.P_TRUTH][1] == [7] and shape[C.P_ROUTE][1] == [9]
    assert shape[C.P_PLACEHOLDER][1] == [11] and set(shape[C.P_DATASET][1]) == {3, 5, 11}
    assert shape[C.P_LENGTH][0] > 0
    assert fast["verified"]["mismatches"] == 0 and fast["verified"]["rows"] >= 5


@pytest.mark.verl_load
def test_every_row_near_the_limit_is_proven_through_verl(ref_rows, tiny_model_dir, tmp_path):
    rows = [r for k, r in enumerate(ref_rows) if k not in (3, 5, 11)]
    path = _write(rows, tmp_path / "rows.parquet")
    proc = load_processor(str(tiny_model_dir))
    counts = [count_prompt_tokens(r, proc) for r in rows]
    limit = sorted(counts)[len(counts) // 2]
    near = sum(abs(n - limit) <= 8 for n in counts)
    report = C.check_file(path, processor=str(tiny_model_dir), max_prompt_length=limit, progress=False,
                          verify=0, margin=8)
    assert report["verified"] == {"rows": near, "sample": 0, "near_limit": near, "fast_path_skipped": 0,
                                  "mismatches": 0}
    assert report["problems"][C.P_LENGTH]["count"] == sum(n > limit for n in counts)
    assert report["lengths"]["max"] == max(counts) and report["lengths"]["counted"] == len(rows)


@pytest.mark.verl_load
def test_a_wrong_fast_count_fails_the_check(ref_rows, tiny_model_dir, tmp_path, monkeypatch):
    from medrl.data.prompt_length import PromptCounter

    path = _write(ref_rows[12:20], tmp_path / "rows.parquet")
    real = PromptCounter.image_tokens
    monkeypatch.setattr(PromptCounter, "image_tokens", lambda self, h, w, ele: real(self, h, w, ele) + 1)
    report = C.check_file(path, processor=str(tiny_model_dir), max_prompt_length=4096, progress=False, verify=3)
    mism = report["problems"][C.P_MISMATCH]
    assert mism["count"] == 3 and report["verified"]["mismatches"] == 3
    assert "fast count" in mism["example"] and any("--full" in n for n in report["notes"])


def test_rows_the_fast_path_cannot_count_are_counted_through_verl(tiny_model_dir, tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(_png())
    img = {"image": p.as_uri(), "min_pixels": 3136, "max_pixels": 12544}
    rows = [_row(0, img), _row(1, img, question="<image>\nWhat is <|placeholder|> here? " + "word " * 400)]
    path = _write(rows, tmp_path / "rows.parquet")
    report = C.check_file(path, processor=str(tiny_model_dir), max_prompt_length=300, progress=False, verify=0)
    assert report["verified"]["fast_path_skipped"] == 1 and report["verified"]["rows"] == 1
    assert report["problems"][C.P_LENGTH]["rows"] == [1]
    assert "counted by verl" in report["problems"][C.P_LENGTH]["example"]


@pytest.mark.slow  # full verl loads / worker processes
def test_worker_processes_give_the_inline_report(ref_rows, tiny_model_dir, tmp_path, monkeypatch):
    path = _write(ref_rows, tmp_path / "rows.parquet")
    kw = dict(processor=str(tiny_model_dir), max_prompt_length=60, progress=False, verify=4, seed=3)
    inline = C.check_file(path, **kw)
    monkeypatch.setattr(check_fast, "INLINE_ROWS", 0)
    monkeypatch.setattr(check_fast, "INLINE_PROVE_ROWS", 0)
    pooled = C.check_file(path, workers=2, **kw)
    for report in (inline, pooled):
        report.pop("seconds")
    assert json.dumps(pooled, sort_keys=True, default=str) == json.dumps(inline, sort_keys=True, default=str)


def test_embedded_rows_and_no_processor(tmp_path):
    png = _png()
    rows = [_row(i, {"bytes": png}) for i in range(6)]
    rows[2]["images"] = [{"bytes": png[:-30]}]
    rows[4]["images"] = [{"bytes": b"not an image at all"}]
    path = _write(rows, tmp_path / "e.parquet", mode="embed")
    report = C.check_file(path, progress=False)
    assert _shape(report) == {C.P_IMAGE: (2, [2, 4])}
    assert "lengths" not in report and any("no --processor" in n for n in report["notes"])


@pytest.mark.slow  # full verl loads / worker processes
def test_cli_fast_and_full(ref_rows, tiny_model_dir, tmp_path, capsys):
    from medrl.cli import main

    good = _write([r for k, r in enumerate(ref_rows) if k not in (3, 5, 7, 9, 11)], tmp_path / "good.parquet")
    args = [str(good), "--processor", str(tiny_model_dir), "--max_prompt_length", "4096", "--no_progress"]
    assert main(["check", *args]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "proven" in out
    assert main(["check", *args, "--full"]) == 0
    bad = _write(ref_rows, tmp_path / "bad.parquet")
    assert main(["check", str(bad), "--processor", str(tiny_model_dir), "--no_progress", "--json"]) == 1
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["problems"][C.P_IMAGE]["count"] == 2


def test_memory_stays_flat_in_rows_for_mixed_rows():
    """The mixed-rows counter keeps counts and the first few rows only, however many rows pass."""
    mixed = C.MixedRows(show=3)
    for r in range(100_000):
        mixed.add(r % 1000 != 0, r, f"id{r}")
    log = C.ProblemLog(show=3)
    mixed.flag(log)
    p = log.problems[C.P_MIXED]
    assert p["count"] == 100 and p["rows"] == [0, 1000, 2000] and len(mixed.seen[True][1]) == 3

"""medrl.bench.generated_sets: the learning bench's generated splits, their seeds, and a folder of another mix."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from medrl.bench import generated_sets


def test_new_images_are_generated_and_converted_once(tmp_path, monkeypatch):
    val = generated_sets.new_images(tmp_path, "vindr", 6)
    assert val == tmp_path / "data" / "val.parquet"
    rows = pq.read_table(val).to_pylist()
    assert 0 < len(rows) <= 6 and all(r["data_source"] for r in rows)
    monkeypatch.setattr(generated_sets, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert generated_sets.new_images(tmp_path, "vindr", 6) == val


def test_each_split_has_its_own_generator_seed_and_the_mix_is_recorded(tmp_path, monkeypatch):
    calls = []

    def generate(src, data, split, n, seed, mix, sft=False):
        calls.append((split, n, seed, mix, sft))
        for name in (split, f"sft_{split}"):
            (data / f"{name}.parquet").parent.mkdir(parents=True, exist_ok=True)
            (data / f"{name}.parquet").write_bytes(b"")

    monkeypatch.setattr(generated_sets, "generate", generate)
    files = generated_sets.prepare_data(tmp_path, 10, 4, "vindr")
    assert calls == [("train", 10, 1, "vindr", True), ("val", 4, 2, "vindr", True)]
    assert generated_sets.NEW_IMAGES_SEED not in {seed for _, _, seed, _, _ in calls}
    assert files["val"] == str(tmp_path / "data" / "val.parquet")
    assert (tmp_path / "data" / "mix.txt").read_text() == "vindr\n"
    with pytest.raises(ValueError, match=f"{tmp_path / 'data'} holds the 'vindr' data set, not 'one'"):
        generated_sets.prepare_data(tmp_path, 10, 4, "one")
    assert len(calls) == 2  # the made sets are kept, not made again
    assert generated_sets.prepare_data(tmp_path, 10, 4, "vindr") == files

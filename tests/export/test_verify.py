"""The merge's verifier is independent of the merge: a key-mapping bug in the merge fails the check.

A world-size-1 checkpoint of plain tensors (the tiny model's own state dict, the names
verl's FSDP shards carry) goes through `medrl merge` in seconds; the torchrun checkpoints
of `test_export_merge.py` (slow) cover sharded, LoRA and adapter-only merges.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

Q = "model.language_model.layers.0.self_attn.q_proj.weight"
O = "model.language_model.layers.0.self_attn.o_proj.weight"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir) -> Path:
    """RUN/global_step_1/actor with model_world_size_1_rank_0.pt and verl's huggingface/ folder."""
    import torch
    from transformers import AutoModelForImageTextToText

    run = tmp_path_factory.mktemp("plain-run")
    actor = run / "global_step_1" / "actor"
    shutil.copytree(tiny_model_dir, actor / "huggingface", ignore=shutil.ignore_patterns("*.safetensors"))
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, actor / "model_world_size_1_rank_0.pt")
    return run


def test_an_honest_merge_verifies(run, tmp_path, capsys):
    from medrl.cli import main

    assert main(["merge", str(run), "--out", str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    assert "verified" in capsys.readouterr().out and (tmp_path / "hf" / "model.safetensors").exists()


def test_two_same_shape_tensors_swapped_by_the_merge_mapping_fail_verification(run, tmp_path, capsys, monkeypatch):
    import torch

    from medrl.cli import main
    from medrl.export import merge as merge_mod

    state = torch.load(run / "global_step_1/actor/model_world_size_1_rank_0.pt", weights_only=False)
    assert state[Q].shape == state[O].shape and not torch.equal(state[Q], state[O])
    real = merge_mod.hf_key
    swapped = {Q: O, O: Q}
    monkeypatch.setattr(merge_mod, "hf_key", lambda key: swapped.get(real(key), real(key)))
    out = tmp_path / "hf"
    assert main(["merge", str(run), "--out", str(out), "--dtype", "fp32"]) == 1
    assert f"tensor {O}: differs from the FSDP shards" in capsys.readouterr().err  # o_proj sorts first
    assert not out.exists() and (tmp_path / "hf.unverified").is_dir()


def test_the_verifier_takes_only_the_error_type_from_the_export_package():
    import medrl.export.verify as verify

    tree = ast.parse(Path(verify.__file__).read_text())
    taken = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             and (n.module or "").startswith("medrl.export") for a in n.names}
    assert taken == {("medrl.export.errors", "MergeError")}

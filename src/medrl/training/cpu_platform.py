"""A verl platform for machines without an accelerator: tensors on "cpu", gloo collectives.

verl 0.9.1 only registers nvidia/huawei/amd platforms and falls back to CUDA. This module
registers a `PlatformBase` subclass under the name "cpu" (selected with `VERL_PLATFORM=cpu`)
plus the two small CPU-only adjustments verl needs, both through verl's own registries or
scoped to this platform:

- verl builds the process-group backend as ``"cpu:gloo,{device}:{backend}"``; with device
  "cpu" that is ``"cpu:gloo,cpu:gloo"``, which torch rejects ("Duplicate device type cpu").
  `dedupe_backend` collapses identical pairs; it is installed only when this platform is
  the active one.
- the FSDP2 reference model forces ``CPUOffloadPolicy(pin_memory=True)``, and pinning host
  memory raises without an accelerator. The CPU engines registered in verl's
  `EngineRegistry` for device "cpu" build the reference model without the offload policy
  (offloading to the CPU is meaningless when everything already lives there).
- a critic (value model) is loaded with flash_attention_2, hard-coded; the CPU value engine
  loads it with sdpa instead (`load_valuehead_model_sdpa`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from types import SimpleNamespace
from typing import Any, Optional

import torch

PLATFORM_NAME = "cpu"


def dedupe_backend(backend: Any) -> Any:
    """Drop repeated identical ``device:backend`` pairs from a torch backend string."""
    if not isinstance(backend, str) or "," not in backend or ":" not in backend:
        return backend
    pairs: list[str] = []
    for pair in (p.strip() for p in backend.split(",")):
        if pair and pair not in pairs:
            pairs.append(pair)
    return ",".join(pairs)


def _memory_info() -> tuple[int, int]:
    """(available, total) host memory in bytes, the CPU analogue of `torch.cuda.mem_get_info`."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)
    except ImportError:  # psutil comes with ray[default]; keep a safe answer anyway
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, pages


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return 0


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


def make_device_module() -> SimpleNamespace:
    """A stand-in for the `torch.cuda` functions verl calls, answering for the host CPU."""
    cpu = torch.cpu
    return SimpleNamespace(
        # Reported unavailable so verl's memory helpers and map_location take their CPU paths.
        is_available=lambda: False,
        is_initialized=lambda: True,
        device_count=lambda: 1,
        current_device=lambda: "cpu",
        set_device=_noop,
        get_device_name=lambda *_a, **_k: "cpu",
        synchronize=lambda *_a, **_k: None,
        empty_cache=_noop,
        ipc_collect=_noop,
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
        get_rng_state=lambda *_a, **_k: torch.get_rng_state(),
        set_rng_state=lambda state, *_a, **_k: torch.set_rng_state(state),
        mem_get_info=lambda *_a, **_k: _memory_info(),
        memory_allocated=lambda *_a, **_k: _rss(),
        memory_reserved=lambda *_a, **_k: _rss(),
        max_memory_allocated=lambda *_a, **_k: _rss(),
        max_memory_reserved=lambda *_a, **_k: _rss(),
        reset_peak_memory_stats=_noop,
        memory_stats=lambda *_a, **_k: {},
        set_per_process_memory_fraction=_noop,
        Stream=cpu.Stream,
        Event=cpu.Event,
        stream=cpu.stream,
        current_stream=cpu.current_stream,
    )


def _platform_class():
    """Build the PlatformBase subclass lazily so importing medrl never imports verl."""
    from verl.plugin.platform import PlatformBase

    class PlatformCPU(PlatformBase):
        """verl platform for hosts without an accelerator (tests, CI, laptop rehearsal)."""

        _module = make_device_module()

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self):
            return self._module

        def is_available(self) -> bool:
            return True  # the host CPU is always there; silences verl's "not available" warning

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            # Never auto-detected: a GPU host must keep CUDA. Chosen only by VERL_PLATFORM=cpu.
            return False

        def current_device(self):
            return "cpu"  # verl passes this to .to(); an int would mean cuda:N

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: Optional[int] = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            # Ray sets CUDA_VISIBLE_DEVICES for logical GPUs; harmless on a GPU-less host.
            return "CUDA_VISIBLE_DEVICES"

        @contextlib.contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            # Ray accepts logical GPUs on a GPU-less host (ray.init(num_gpus=N)); reusing the
            # "GPU" resource keeps verl's placement-group code unchanged.
            return "GPU"

        def ray_noset_envvars(self) -> list[str]:
            return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self):
            return None

    return PlatformCPU


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


def _engine_classes():
    """FSDP engines for device "cpu": verl's own, with the reference model left un-offloaded."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    def build_without_pinned_offload(base):
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
                # verl builds a critic through verl.utils.model.load_valuehead_model, which asks
                # transformers for flash_attention_2 unconditionally (GPU only). For the build
                # only, the same loader with sdpa attention stands in (imported by name at call time).
                import verl.utils.model as verl_model

                original = verl_model.load_valuehead_model
                verl_model.load_valuehead_model = load_valuehead_model_sdpa
                try:
                    return super()._build_module()
                finally:
                    verl_model.load_valuehead_model = original

        CPUEngine.__name__ = CPUEngine.__qualname__ = f"CPU{base.__name__}"
        return CPUEngine

    registry = EngineRegistry._engines
    for model_type, base in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        backends = registry.get(model_type, {})
        if all(PLATFORM_NAME in backends.get(b, {}) for b in ("fsdp", "fsdp2")):
            continue  # already registered in this process
        EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device=PLATFORM_NAME)(
            build_without_pinned_offload(base)
        )


def _install_backend_dedupe() -> None:
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


def register() -> None:
    """Register the "cpu" platform; when it is selected, also install the CPU engines and fixes."""
    from verl.plugin.platform import PlatformRegistry

    if PlatformRegistry.get(PLATFORM_NAME) is None:
        PlatformRegistry.register(platform=PLATFORM_NAME)(_platform_class())
    if os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME:
        _install_backend_dedupe()
        _engine_classes()

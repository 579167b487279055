"""A verl platform for machines without an accelerator: tensors on "cpu", gloo collectives.

verl 0.9.1 only registers nvidia/huawei/amd platforms and falls back to CUDA. This module
registers a `PlatformBase` subclass under the name "cpu" (selected with `VERL_PLATFORM=cpu`).
When it is the active platform, `register` also applies the CPU changes of `medrl.cpu.patches`
(verl's "cpu:gloo,cpu:gloo" process-group backend, FSDP engines without pinned offload, a
critic loaded with sdpa); they are scoped to this platform.
"""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace
from typing import Any, Optional

import torch

from medrl.cpu import patches

PLATFORM_NAME = "cpu"


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


def register() -> None:
    """Register the "cpu" platform; when it is selected, also install the CPU engines and fixes."""
    from verl.plugin.platform import PlatformRegistry

    if PlatformRegistry.get(PLATFORM_NAME) is None:
        PlatformRegistry.register(platform=PLATFORM_NAME)(_platform_class())
    if os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME:
        patches.install_backend_dedupe()
        patches.register_cpu_engines(PLATFORM_NAME)

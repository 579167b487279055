"""The environment vLLM's CPU build needs, shared by every place medrl starts a vLLM engine.

Training (verl's vLLM rollout replicas, through the Ray runtime_env), `medrl eval --backend vllm`
and a judge started with `vllm serve` on a CPU host all take the same values.
"""

from __future__ import annotations

import os
from typing import MutableMapping


def engine_env(kv_cache_gib: int | None = 1) -> dict[str, str]:
    """Environment for vLLM's CPU engine processes (strings: Ray refuses other env values).

    `kv_cache_gib=None` leaves the KV cache size to the engine arguments (training sets
    `kv_cache_memory_bytes` on its rollout, finer than this variable's whole GiB).
    """
    env = {
        # vLLM binds its OpenMP threads to cores by default; several engines and the FSDP workers
        # share a small host, and binding them all to the same cores serialises them.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        # vLLM's CPU sampler is the one piece it compiles under enforce_eager (inductor, in
        # topk_topp_sampler.compiled_random_sample), again in every engine process: 13-14 s of a
        # core per engine start, most of a tiny model's engine start (18 s -> 5 s measured, 2 cores,
        # 2026-12-04). Run eagerly, it draws from the same distribution. Every medrl CPU process
        # gets this, so no other compile step sneaks into a rehearsal either.
        "TORCHDYNAMO_DISABLE": "1",
    }
    if kv_cache_gib is not None:
        # vLLM's CPU KV cache is sized in GiB by this variable (gpu_memory_utilization is ignored
        # on a CPU); its default takes a large share of the host's memory per engine. When set,
        # it overrides the kv_cache_memory_bytes engine argument.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    return env


def apply_engine_env(env: MutableMapping[str, str] | None = None,
                     kv_cache_gib: int | None = 1) -> MutableMapping[str, str]:
    """Set `engine_env(kv_cache_gib)` in `env` (default os.environ) where the user has not set it already."""
    env = os.environ if env is None else env
    for key, value in engine_env(kv_cache_gib).items():
        env.setdefault(key, value)
    return env

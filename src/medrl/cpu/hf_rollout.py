"""An HF-`generate` rollout for verl: runs the trainer's own agent loop without vLLM/SGLang.

Three pieces, each plugged into one of verl's registries (see `register`):

- `HFRolloutServer`, a Ray actor holding a transformers copy of the policy. verl's agent
  loop calls its `generate(prompt_ids=..., sampling_params=..., image_data=...)` and gets a
  `TokenOutput` (token ids + log-probs). Requests that arrive together are batched into one
  `generate()` call, which is what makes a CPU step bearable.
- `HFReplica`, the `RolloutReplica` that launches one server per replica
  (`RolloutReplicaRegistry.register("hf", ...)`, selected by `rollout.name=hf`).
- `HFServerAdapter`, the worker-side `BaseRollout` that receives the actor's weights by
  name after each update (the "naive" checkpoint-engine path) and loads them into its server.

Qwen2.5-VL needs `mm_token_type_ids` to use its 3D (image-aware) rotary positions; without
it transformers silently falls back to 1D positions while verl's actor uses 3D ones, and the
rollout's log-probs no longer match the actor's. The server always passes it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Generator, Optional

import ray
import torch

from medrl.cpu import patches

SERVER_PREFIX = "medrl_hf_server_"
# How long the server waits for concurrent requests to join a batch (seconds). verl's agent
# loop fires all prompts of a step within a few milliseconds of each other.
BATCH_WINDOW_S = float(os.environ.get("MEDRL_HF_BATCH_WINDOW_S", "0.05"))


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: dict[str, Any]
    images: list[Any]
    future: asyncio.Future = field(repr=False)


def _sampling_key(sampling: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in sampling.items() if k not in ("max_tokens", "logprobs")))


def _load_policy(local_path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(local_path, trust_remote_code=True)
    # sdpa: flash-attention-2 (verl's default) needs a GPU.
    kwargs = dict(dtype=dtype, attn_implementation="sdpa", trust_remote_code=True)
    if hasattr(config, "vision_config"):
        model = AutoModelForImageTextToText.from_pretrained(local_path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(local_path, **kwargs)
    return model.eval()


class HFRolloutServer:
    """Token-in/token-out generation server for one replica (a Ray actor, see `HFReplica`)."""

    def __init__(self, config, model_config, replica_rank: int = 0):
        from transformers import AutoProcessor, AutoTokenizer

        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        self.config = omega_conf_to_dataclass(config)
        self.model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        path = self.model_config.local_path
        self.model = _load_policy(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        try:
            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        except (OSError, ValueError):
            self.processor = None  # text-only model
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None) or self.tokenizer.eos_token_id
        self.eos_ids = set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        # Vision placeholders are never a valid answer; a random-init policy samples them, and
        # verl's agent loop then fails to re-expand the images. Suppressing them changes the
        # sampling only, not the reported log-probs (computed from the raw logits below).
        cfg = self.model.config
        self.suppress = sorted(
            {getattr(cfg, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                       "vision_end_token_id") if getattr(cfg, k, None) is not None}
        )
        self.global_steps: Optional[int] = None
        self._pending: list[_Request] = []
        self._batcher: Optional[asyncio.Task] = None
        self._model_lock = threading.Lock()
        self.batches = 0  # number of generate() calls, for tests and benchmarks

    # ---- generation -------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str = "",
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        **_unused: Any,
    ):
        """Queue one request; it is answered by the next batched `generate()`."""
        if video_data:
            raise NotImplementedError("the HF rollout handles images only, not video")
        loop = asyncio.get_running_loop()
        request = _Request(list(prompt_ids), dict(sampling_params), list(image_data or []), loop.create_future())
        self._pending.append(request)
        if self._batcher is None or self._batcher.done():
            self._batcher = loop.create_task(self._run_batches())
        return await request.future

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(BATCH_WINDOW_S)
            pending, self._pending = self._pending, []
            groups: dict[tuple, list[_Request]] = {}
            for req in pending:
                groups.setdefault(_sampling_key(req.sampling), []).append(req)
            for group in groups.values():
                try:
                    outputs = await loop.run_in_executor(None, self._generate_batch, group)
                except Exception as exc:  # hand the error to every waiting caller
                    for req in group:
                        if not req.future.done():
                            req.future.set_exception(exc)
                    continue
                for req, out in zip(group, outputs):
                    if not req.future.done():
                        req.future.set_result(out)

    def _max_new_tokens(self, prompt_len: int, sampling: dict[str, Any]) -> int:
        budget = min(self.config.response_length, self.config.prompt_length + self.config.response_length - prompt_len)
        if sampling.get("max_tokens"):
            budget = min(budget, int(sampling["max_tokens"]))
        return max(1, budget)

    @torch.no_grad()
    def _generate_batch(self, requests: list[_Request]):
        """Left-pad the prompts, run one `generate()`, return one TokenOutput per request."""
        from verl.workers.rollout.replica import TokenOutput

        sampling = requests[0].sampling
        temperature = float(sampling.get("temperature", 1.0) or 0.0)
        do_sample = temperature > 0
        max_new = [self._max_new_tokens(len(r.prompt_ids), r.sampling) for r in requests]
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, req in enumerate(requests):
            input_ids[i, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids)
            attention[i, width - len(req.prompt_ids) :] = 1
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        images = [img for r in requests for img in r.images]
        if images:
            if self.processor is None:
                raise ValueError("images were sent to a model without an image processor")
            vision = self.processor.image_processor(images=images, return_tensors="pt")
            inputs.update({k: v for k, v in vision.items() if k in ("pixel_values", "image_grid_thw")})
        if self.processor is not None and hasattr(self.processor, "create_mm_token_type_ids"):
            # 3D rotary positions (see module docstring); padding is text (type 0).
            types = self.processor.create_mm_token_type_ids(input_ids.tolist())
            inputs["mm_token_type_ids"] = torch.tensor(types, dtype=torch.long) * attention
        top_k = int(sampling.get("top_k", -1) or -1)
        gen_kwargs = dict(
            max_new_tokens=max(max_new),
            do_sample=do_sample,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
            output_logits=True,
            return_dict_in_generate=True,
        )
        if self.suppress:
            gen_kwargs["suppress_tokens"] = self.suppress
        if do_sample:
            gen_kwargs.update(
                temperature=temperature, top_p=float(sampling.get("top_p", 1.0)), top_k=top_k if top_k > 0 else 0
            )
        if sampling.get("repetition_penalty", 1.0) not in (None, 1.0):
            gen_kwargs["repetition_penalty"] = float(sampling["repetition_penalty"])
        with self._model_lock:
            out = self.model.generate(**inputs, **gen_kwargs)
            self.batches += 1
        new_tokens = out.sequences[:, width:]
        # Log-probs of the sampled tokens under the temperature-scaled distribution, the same
        # quantity verl's actor computes (logits / temperature) for `old_log_prob`.
        logits = torch.stack(out.logits, dim=1).float()
        if do_sample:
            logits = logits / temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        results = []
        for i, req in enumerate(requests):
            ids = new_tokens[i].tolist()[: max_new[i]]
            n = len(ids)
            for j, tok in enumerate(ids):
                if tok in self.eos_ids:
                    n = j + 1
                    break
            results.append(
                TokenOutput(
                    token_ids=ids[:n],
                    log_probs=logp[i, :n].tolist(),
                    stop_reason="completed",
                    extra_fields={"global_steps": self.global_steps},
                )
            )
        return results

    # ---- weights ------------------------------------------------------------------------

    def load_weights(self, named: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> int:
        """Load the actor's tensors by name; returns how many were loaded, fails on unknown names."""
        own = self.model.state_dict()
        mapping = getattr(self.model, "_checkpoint_conversion_mapping", None) or {}
        loaded: dict[str, torch.Tensor] = {}
        unknown = []
        for name, tensor in named.items():
            target = name
            if target not in own:
                for pattern, repl in mapping.items():
                    target, hits = re.subn(pattern, repl, name)
                    if hits:
                        break
            if target not in own:
                unknown.append(name)
                continue
            loaded[target] = tensor.to(own[target].dtype)
        if unknown:
            raise KeyError(f"HF rollout: {len(unknown)} weight names not in the rollout model, e.g. {unknown[:3]}")
        with self._model_lock:
            self.model.load_state_dict(loaded, strict=False)
        if global_steps is not None:
            self.global_steps = global_steps
        return len(loaded)

    def get_server_address(self) -> str:
        return f"hf-rollout-{self.replica_rank}"

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    def get_batches(self) -> int:
        return self.batches

    # Memory management and request control are no-ops: the model stays in host memory and
    # requests are short, so there is nothing to release, abort or resume.
    async def wake_up(self): ...
    async def sleep(self): ...
    async def clear_kv_cache(self): ...
    async def release_kv_cache(self): ...
    async def resume_kv_cache(self): ...
    async def abort_all_requests(self, reject_request: bool = False): ...
    async def resume_generation(self): ...
    async def start_profile(self, **kwargs): ...
    async def stop_profile(self): ...


def _replica_class():
    from verl.workers.rollout.replica import RolloutReplica

    class HFReplica(RolloutReplica):
        """One `HFRolloutServer` per replica, beside verl's FSDP workers."""

        def rollout_worker_use_gpu(self) -> bool:
            return False

        async def launch_servers(self):
            name = f"{SERVER_PREFIX}{'reward_' if self.is_reward_model else ''}{self.replica_rank}{self.name_suffix}"
            server = (
                ray.remote(HFRolloutServer)
                .options(name=name, num_cpus=0, max_concurrency=self.max_concurrency)
                .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
            )
            self.servers = [server]
            self._server_handle = server
            self._server_address = await server.get_server_address.remote()

    return HFReplica


def _adapter_class():
    from verl.workers.rollout.base import BaseRollout

    class HFServerAdapter(BaseRollout):
        """Worker-side end of the HF rollout: forwards the actor's weights to its server."""

        def __init__(self, config, model_config, device_mesh=None, replica_rank: int = -1, **_kwargs):
            super().__init__(config, model_config, device_mesh)
            rank = int(os.environ.get("RANK", "0"))
            size = (
                self.config.tensor_model_parallel_size
                * self.config.data_parallel_size
                * self.config.pipeline_model_parallel_size
            )
            self.replica_rank = rank // size if replica_rank == -1 else replica_rank
            self.is_leader_rank = rank % size == 0
            self._server = None

        def _server_handle(self):
            if self._server is None:
                self._server = ray.get_actor(f"{SERVER_PREFIX}{self.replica_rank}")
            return self._server

        async def update_weights(
            self,
            weights: Generator[tuple[str, torch.Tensor], None, None],
            wire_format: str = "named_tensors",
            **kwargs,
        ):
            if wire_format != "named_tensors":
                raise NotImplementedError(f"HF rollout receives full named tensors, not {wire_format!r}")
            if kwargs.get("peft_config") is not None:
                raise NotImplementedError("HF rollout needs merged LoRA weights: set actor_rollout_ref.model.lora.merge=True")
            # Every rank must walk the generator: each step is a collective (DTensor gather).
            named = {name: t.detach().to("cpu", copy=True) for name, t in weights}
            if self.is_leader_rank:
                await self._server_handle().load_weights.remote(ray.put(named), kwargs.get("global_steps"))

        async def resume(self, tags: list[str]):
            return None

        async def release(self):
            return None

    return HFServerAdapter


@functools.cache
def _classes() -> dict[str, type]:
    return {"HFReplica": _replica_class(), "HFServerAdapter": _adapter_class()}


def __getattr__(name: str) -> type:
    """`HFReplica` and `HFServerAdapter`, built on first use: they subclass verl's classes, imported lazily.

    verl's adapter registry names the adapter by import path, so any process can resolve it.
    """
    if name in ("HFReplica", "HFServerAdapter"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """Register the replica ("hf") and its worker-side adapter in verl's rollout registries."""
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    replica = _classes()["HFReplica"]
    RolloutReplicaRegistry.register("hf", lambda: replica)
    patches.register_rollout_adapter("hf", f"{__name__}.HFServerAdapter")

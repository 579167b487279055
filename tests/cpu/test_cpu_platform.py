"""medrl's CPU platform as verl sees it, in a fresh process started with medrl's run environment."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from medrl.training.env import BACKEND_MODULE, run_env


def test_run_env_selects_the_cpu_backend_without_touching_the_callers_environment():
    base = {"PATH": "/bin", "VERL_USE_EXTERNAL_MODULES": "my.plugin"}
    env = run_env("cpu", base)
    assert env["VERL_USE_EXTERNAL_MODULES"] == f"my.plugin,{BACKEND_MODULE}"
    assert env["VERL_PLATFORM"] == "cpu" and env["WANDB_MODE"] == "disabled"
    assert base == {"PATH": "/bin", "VERL_USE_EXTERNAL_MODULES": "my.plugin"}
    gpu = run_env("gpu", {"PATH": "/bin"})
    assert "VERL_PLATFORM" not in gpu  # GPU hosts keep verl's own detection
    assert gpu["VERL_USE_EXTERNAL_MODULES"] == BACKEND_MODULE  # the "hf" rollout stays available
    assert run_env("cpu", env)["VERL_USE_EXTERNAL_MODULES"].count(BACKEND_MODULE) == 1


PROBE = textwrap.dedent(
    """
    import json, os, torch, torch.distributed as dist
    import verl  # imports medrl.cpu.backend through VERL_USE_EXTERNAL_MODULES
    from verl.utils.device import get_device_name, get_nccl_backend, get_resource_name, get_torch_device
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutReplicaRegistry
    from verl.utils.distributed import initialize_global_process_group

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    initialize_global_process_group()  # builds "cpu:gloo,cpu:gloo"
    t = torch.ones(2)
    dist.all_reduce(t)
    dev = get_torch_device()
    print(json.dumps({
        "device": get_device_name(), "backend": get_nccl_backend(), "ray": get_resource_name(),
        "engine": EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__,
        "critic": EngineRegistry.get_engine_cls("value_model", "fsdp2").__name__,
        "adapter": get_rollout_class("hf", "async").__name__,
        "replica": RolloutReplicaRegistry.get("hf").__name__,
        "reduced": t.tolist(), "mem": dev.mem_get_info()[1] > 0, "available": dev.is_available(),
    }))
    dist.destroy_process_group()
    """
)


def _probe(script: str) -> dict:
    """Run `script` in the environment of a CPU run; its last line of output, parsed as JSON."""
    out = subprocess.run([sys.executable, "-c", script], env=run_env("cpu"), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.verl_load
def test_verl_sees_the_cpu_platform_engines_and_rollout():
    got = _probe(PROBE)
    assert got["device"] == "cpu" and got["backend"] == "gloo" and got["ray"] == "GPU"
    assert got["engine"] == "CPUFSDPEngineWithLMHead" and got["critic"] == "CPUFSDPEngineWithValueHead"
    assert got["adapter"] == "HFServerAdapter" and got["replica"] == "HFReplica"
    assert got["reduced"] == [1.0, 1.0] and got["mem"] and got["available"] is False


SAMPLER_PROBE = textwrap.dedent(
    """
    import json, torch
    from torch._dynamo.utils import counters
    from vllm.v1.sample.ops.topk_topp_sampler import compiled_random_sample

    logits = torch.full((64, 5), -30.0)
    logits[:, 3] = 30.0  # one token holds all the probability
    picked = compiled_random_sample(logits)
    print(json.dumps({"picked": sorted(set(picked.tolist())), "compiled": sum(counters["frames"].values())}))
    """
)


@pytest.mark.verl_load
def test_vllms_cpu_sampler_runs_without_a_compile_step_in_a_cpu_run():
    """The environment of a CPU run keeps vLLM's sampler out of inductor (13-14 s per engine start)."""
    assert _probe(SAMPLER_PROBE) == {"picked": [3], "compiled": 0}

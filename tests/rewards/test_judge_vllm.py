"""The judge reward against a real vLLM OpenAI server of the tiny model, started with the exact
command a Slurm judge node runs (`medrl.slurm.judge_command`).

The tiny model is random, so its free text rarely holds a score; with `structured: true` vLLM's
structured outputs force `Score: N`, and every judgement parses. About 1-2 minutes (server start).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import vllm  # noqa: E402,F401  (a broken install fails here, never skips)

pytestmark = pytest.mark.slow  # starts a vLLM engine (a minute or more on 2 cores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def judge_server(tiny_model_dir, tmp_path_factory):
    from medrl.slurm import SlurmJob, judge_command
    from medrl.cpu.vllm_env import apply_engine_env

    port = _free_port()
    job = SlurmJob(recipe="grpo_enhanced", judge_node=True, judge_model=str(tiny_model_dir), judge_port=port,
                   # What a user passes for a small CPU judge (--judge-arg); the GPU defaults stay otherwise.
                   judge_args=["--enforce-eager", "--dtype", "float32", "--max-model-len", "2048"])
    cmd = judge_command(job)
    assert cmd[:3] == ["vllm", "serve", str(tiny_model_dir)] and "0.0.0.0" in cmd
    log = tmp_path_factory.mktemp("judge") / "server.log"
    env = apply_engine_env(dict(os.environ))
    # The sbatch script sources the venv before `vllm serve`; the same PATH here (make runs .venv/bin/python
    # without activating it).
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:  # what the sbatch script does: poll /health until the server answers
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"vllm serve did not come up (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield f"{url}/v1", str(tiny_model_dir)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def _row(repo_root):
    image = sorted((repo_root / "examples" / "sample" / "images").glob("*.png"))[0]
    return dict(data_source="medrl/grounding", solution_str="<think>x</think><answer>[0.1, 0.2, 0.5, 0.6]</answer>",
                ground_truth="[[0.1, 0.2, 0.5, 0.6]]",
                extra_info={"image": str(image), "question": "Where is the nodule?"})


def test_judge_scores_through_a_vllm_server_with_the_image(judge_server, repo_root):
    from medrl.rewards.judge import KEYS, compute_score

    base_url, model = judge_server
    out = compute_score(**_row(repo_root), base_url=base_url, model=model, structured=True, max_tokens=8,
                        retries=0, timeout=120)
    assert set(out) == set(KEYS)
    assert out["judge_error"] == 0.0 and out["judge_attempts"] == 1.0  # the server accepted the image request
    assert out["judge_parsed"] == 1.0 and 0.0 <= out["score"] <= 1.0  # `Score: N`, forced by the server


def test_judge_async_and_unstructured_replies_stay_in_range(judge_server, repo_root):
    import asyncio

    from medrl.rewards.judge import compute_score_async

    base_url, model = judge_server
    structured = asyncio.run(compute_score_async(**_row(repo_root), base_url=base_url, model=model,
                                                 structured="true", max_tokens=8, retries=0, timeout=120))
    assert structured["judge_parsed"] == 1.0
    # Free text from a random model: whatever it says, the score is in range and the flags say why.
    free = asyncio.run(compute_score_async(**_row(repo_root), base_url=base_url, model=model, max_tokens=16,
                                           retries=0, timeout=120))
    assert free["judge_error"] == 0.0 and 0.0 <= free["score"] <= 1.0
    assert free["judge_parsed"] + free["judge_default"] == 1.0

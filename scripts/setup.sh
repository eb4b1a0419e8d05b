#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with aci_jax installed (editable) and its test extras.
# `--cuda` (or ACI_JAX_CUDA=1): with JAX's CUDA build too (the `cuda` extra: jax-cuda12-plugin with
# its CUDA libraries from PyPI, matching the pinned jax), for a machine with NVIDIA GPUs. A .venv
# built with it keeps it on later plain calls.
set -euo pipefail
cd "$(dirname "$0")/.."
want=test
if [ "${1:-}" = "--cuda" ] || [ "${ACI_JAX_CUDA:-0}" = 1 ]; then want=test,cuda; fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.aci_jax_installed
have=$(cat "$stamp" 2>/dev/null || true)
if [ -z "$have" ] || [ pyproject.toml -nt "$stamp" ] || { [ "$want" = test,cuda ] && [ "$have" != test,cuda ]; }; then
  extras=$want
  [ "$have" = test,cuda ] && extras=test,cuda
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$extras" > "$stamp"
fi

#!/usr/bin/env bash
# Quick start: set up (if needed), then run the main job on the small built-in default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec .venv/bin/python -m aci_jax.rollout exp=detection rollout.n_envs=8 rollout.n_steps=64 "$@"

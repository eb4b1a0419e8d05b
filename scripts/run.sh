#!/usr/bin/env bash
# Quick start: set up (if needed), then the main job on a small built-in default: a short real eye
# evolution (exp=quick: 3 generations x 4 individuals, PPO-trained, a few minutes on a 2-core CPU)
# -> runs/quick/<time>/ with population.csv, generations.jsonl, plots/ and best/ (video).
# Extra arguments are Hydra overrides, e.g. `bash scripts/run.sh evo.num_generations=5 run_dir=runs/q`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec .venv/bin/python -m aci_jax.evo exp=quick "$@"

#!/usr/bin/env bash
# Set up (if needed), then run the test suite on the CPU: test files spread over
# ACI_JAX_TEST_WORKERS processes (default 2, one per core of the reference machine; each file stays
# on one worker so its module fixtures are built once; 0: no workers, one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The launcher's tests submit through a real one-node Slurm (tests/test_launch.py starts it, the
# session stops it): as root with apt, install slurm-wlm and munge once; otherwise those tests skip.
if [ "$(id -u)" = 0 ] && ! command -v slurmctld >/dev/null && command -v apt-get >/dev/null; then
  bash scripts/slurm-local.sh install || echo "test.sh: could not install Slurm; the Slurm tests will skip" >&2
fi
export JAX_PLATFORMS=cpu
workers=${ACI_JAX_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
  exec .venv/bin/python -m pytest tests "$@"
fi
# --max-worker-restart=0: a worker that dies (an abort inside XLA) fails the run at once, naming its test;
# replacing it under --dist loadfile can hang the whole session (pytest-xdist issue #784). -rs: every
# skipped test is listed with its reason at the end (e.g. no EGL for the MuJoCo-render comparison).
exec .venv/bin/python -m pytest tests -n "$workers" --dist loadfile --max-worker-restart=0 -rs "$@"

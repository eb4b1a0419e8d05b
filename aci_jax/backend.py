"""Which JAX backend a command runs on: one line at start, and a GPU asked for but not found is an error.

- `check(command, allow_cpu)`: when the environment says GPUs were allocated (Slurm's
  `SLURM_STEP_GPUS`, `SLURM_JOB_GPUS`, `SLURM_GPUS_ON_NODE`, or `CUDA_VISIBLE_DEVICES` naming
  devices) and JAX has no GPU backend, a ConfigError saying what is installed and the command that
  fixes it (`allow_cpu=true` runs anyway); then prints `[command] 1 × NVIDIA H100 (cuda)` once.
- `quiet_warp_import()`: MJX prints "Failed to import warp: No module named 'warp'" (and the same for
  mujoco_warp) on stdout at import when MuJoCo Warp is not installed, which on a CPU is expected and
  only noise. Installed once by `aci_jax/__init__.py`, a finder drops exactly those two lines from
  that module's import; any other line (a Warp that is installed but fails: a RuntimeError from its
  CUDA driver, say) still prints.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import io
import os
import re
import sys

GPU_PLATFORMS = ("gpu", "cuda", "rocm")
SLURM_GPU_VARS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE")
_WARP_ABSENT = re.compile(r"^Failed to import (warp|mujoco_warp): No module named '(warp|mujoco_warp)(\.[\w.]+)?'$")
_printed: set[str] = set()


def gpu_requested(environ=None) -> str | None:
    """`NAME=value` of the variable saying GPUs were allocated to this job, else None."""
    env = os.environ if environ is None else environ
    for name in SLURM_GPU_VARS:  # GPU indices, except SLURM_GPUS_ON_NODE: a count (0: none)
        v = env.get(name, "").strip()
        if v and v not in ("N/A", "(null)") and not (name == "SLURM_GPUS_ON_NODE" and v == "0"):
            return f"{name}={v}"
    v = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if v and any(p.strip() not in ("", "-1", "NoDevFiles") for p in v.split(",")):
        return f"CUDA_VISIBLE_DEVICES={v}"
    return None


def describe(devices) -> str:
    """`1 × NVIDIA H100 80GB HBM3 (cuda)` / `2 × cpu (cpu)`."""
    d = devices[0]
    return f"{len(devices)} × {d.device_kind} ({d.platform})"


def installed() -> str:
    """The JAX packages installed (jax, jaxlib, any CUDA plugin), for error messages."""
    from importlib.metadata import PackageNotFoundError, distributions, version

    out = []
    for name in ("jax", "jaxlib"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"no {name}")
    plugins = sorted({d.metadata["Name"] for d in distributions()
                      if d.metadata["Name"] and re.match(r"jax[-_]cuda\d+[-_](plugin|pjrt)", d.metadata["Name"])})
    return ", ".join(out + (plugins or ["no CUDA plugin (jax-cuda12-plugin)"]))


def check(command: str, allow_cpu: bool = False) -> str:
    """Refuse to run on the CPU where GPUs were allocated (unless `allow_cpu`); print and return the
    backend line (once per command and process)."""
    import jax

    from aci_jax.config import ConfigError

    devices = jax.devices()
    asked = gpu_requested()
    if asked and devices[0].platform not in GPU_PLATFORMS and not allow_cpu:
        raise ConfigError(
            f"{asked} says GPUs were allocated, but JAX runs on {devices[0].platform}: installed {installed()}. "
            f"Install JAX's CUDA build into this environment: `pip install -e '.[cuda]'` (or `bash scripts/setup.sh "
            f"--cuda` for .venv), or pass allow_cpu=true to run on the CPU anyway")
    line = f"[{command}] {describe(devices)}"
    if line not in _printed:
        _printed.add(line)
        print(line + (f" (allow_cpu: {asked} ignored)" if asked and devices[0].platform not in GPU_PLATFORMS else ""),
              flush=True)
    return line


class _QuietWarpImport(importlib.abc.MetaPathFinder):
    """Drops MJX's 'Failed to import warp/mujoco_warp: No module named ...' lines (see the module doc)."""

    NAME = "mujoco.mjx.warp"

    def find_spec(self, name, path, target=None):
        if name != self.NAME:
            return None
        sys.meta_path.remove(self)  # find the real spec without finding ourselves
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    run(module)
            finally:
                lines = [x for x in buf.getvalue().splitlines() if not _WARP_ABSENT.match(x)]
                if lines:
                    print("\n".join(lines), flush=True)

        spec.loader.exec_module = exec_module
        return spec


def quiet_warp_import() -> None:
    if "mujoco.mjx.warp" not in sys.modules and not any(isinstance(f, _QuietWarpImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietWarpImport())

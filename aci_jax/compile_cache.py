"""The persistent XLA compilation cache every command uses: a program compiled once (the population's
segment, the evaluation, the renderer) is read back by later runs instead of compiled again.

On by default at `$XDG_CACHE_HOME/aci_jax/xla` (`~/.cache/aci_jax/xla`); `ACI_JAX_COMPILE_CACHE=0` turns
it off, `ACI_JAX_COMPILE_CACHE=DIR` puts it elsewhere. Safe under several processes (a sweep, the
processes of a multi-process evolution, the test suite's workers): JAX's cache then runs with a size
limit (`ACI_JAX_COMPILE_CACHE_GB`, default 8), which makes it take a file lock around every read and
write, so no process reads an entry another is still writing; only process 0 of a multi-process run
writes. A folder that cannot be written, or a disk with under 1 GiB free, gives one line and the
command runs without the cache; a read or write that fails later falls back to compiling, silently.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

OFF = ("0", "false", "off", "no")
MIN_FREE = 1 << 30
_enabled: Path | None = None


def cache_dir(environ=None) -> Path | None:
    """Where the cache lives (None: turned off by ACI_JAX_COMPILE_CACHE)."""
    env = os.environ if environ is None else environ
    v = env.get("ACI_JAX_COMPILE_CACHE", "").strip()
    if v.lower() in OFF:
        return None
    if v and v.lower() not in ("1", "true", "on", "yes"):
        return Path(v)
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aci_jax" / "xla"


def enable() -> Path | None:
    """Turn the cache on for this process (idempotent); its folder, or None when off or unusable.
    JAX's own switch follows: off, a compilation computes no cache key and takes XLA's plain path."""
    global _enabled
    if _enabled is not None:
        return _enabled
    path = _usable(cache_dir())
    _jax_cache(path is not None)
    if path is None:
        return None
    import jax

    gb = float(os.environ.get("ACI_JAX_COMPILE_CACHE_GB", "8"))
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_compilation_cache_max_size", int(gb * 2**30))  # > 0: file-locked reads and writes
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    warnings.filterwarnings("ignore", message="Error (reading|writing) persistent compilation cache entry")
    _enabled = path
    return path


def _usable(path: Path | None) -> Path | None:
    """`path` when the cache can live there (writable, ≥ 1 GiB free); else one line and None."""
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
        free = shutil.disk_usage(path).free
    except OSError as e:
        print(f"[aci_jax] compilation cache off: {path} cannot be written ({e.strerror}); compiling as usual "
              f"(ACI_JAX_COMPILE_CACHE=DIR puts it elsewhere, =0 turns it off)", file=sys.stderr)
        return None
    if free < MIN_FREE:
        print(f"[aci_jax] compilation cache off: {free / 2**20:.0f} MiB free on {path}'s disk; compiling as usual",
              file=sys.stderr)
        return None
    return path


def _jax_cache(on: bool) -> None:
    """JAX's own switch (with it on and no folder, JAX still keys every program)."""
    import jax

    jax.config.update("jax_enable_compilation_cache", on)


def size(path: Path | None = None) -> int:
    """Bytes held by the cache (printed nowhere unless asked)."""
    path = path or cache_dir()
    return sum(p.stat().st_size for p in path.glob("*") if p.is_file()) if path and path.is_dir() else 0

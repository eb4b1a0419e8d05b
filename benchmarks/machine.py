"""The machine a benchmark ran on, for its JSON output (shared by the benchmark scripts)."""

from __future__ import annotations

import datetime
import os
import platform


def machine_info(**extra) -> dict:
    """Date, CPU model, cores, JAX backend and version, Python, load average; plus `extra`."""
    import jax

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "platform": jax.default_backend(), "jax": jax.__version__, "python": platform.python_version(),
            "load_avg_start": os.getloadavg(), **extra}

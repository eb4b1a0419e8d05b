"""One program over several processes (JAX's multi-process runtime): an evolution on several GPUs or
nodes is one JAX program whose population mesh spans every process's devices.

`initialize()`, first thing in `python -m aci_jax.evo` (before any JAX computation), joins the
processes of the run:
- under Slurm, in a job step of more than one task (`srun`, one task per GPU: what
  `launch/slurm.py --nodes N --gpus-per-node G` submits), `jax.distributed.initialize()` reads the
  coordinator, the process count and this process's id from Slurm's environment;
- elsewhere from `ACI_JAX_COORDINATOR=host:port ACI_JAX_NUM_PROCESSES=N ACI_JAX_PROCESS_ID=i`
  (every process the same coordinator and count, ids 0..N-1);
- one process (no Slurm step of several tasks, no ACI_JAX_* variables): nothing.
On the CPU the processes' collectives go through gloo.

Process 0 is the writer: it alone touches the run folder. `on_writer(fn)` runs `fn` there and makes
its failure every process's (the others raise `PeerFailed`), so no process is left waiting in a
collective for one that has stopped; `share(tree)` gives every process process 0's arrays;
`stop_together()` ends a process that fails on its own at once (`os._exit`), which makes JAX's
distributed service end the others (a clean exit would wait in JAX's shutdown barrier for processes
that are waiting for it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Any, Callable

import jax
import numpy as np

from aci_jax.config import ConfigError
from aci_jax.runs import RunError

ENV_VARS = ("ACI_JAX_COORDINATOR", "ACI_JAX_NUM_PROCESSES", "ACI_JAX_PROCESS_ID")


class PeerFailed(RunError):
    """Another process of the run failed (its log says why); this one stops too."""


def slurm_tasks() -> int:
    """Tasks of the current Slurm job step: srun's SLURM_STEP_NUM_TASKS (1 outside a step, e.g. in
    a batch script itself, whose SLURM_NTASKS counts tasks that no srun started)."""
    return int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1)


def initialize() -> None:
    """Join this run's processes (see the module docstring); a no-op for one process."""
    given = {k: os.environ.get(k) for k in ENV_VARS}
    if any(given.values()):
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise ConfigError(f"distributed run: {', '.join(missing)} not set; set all of {', '.join(ENV_VARS)} "
                              f"(e.g. ACI_JAX_COORDINATOR=localhost:12345 ACI_JAX_NUM_PROCESSES=2 "
                              f"ACI_JAX_PROCESS_ID=0..1) or none")
        n, i = int(given["ACI_JAX_NUM_PROCESSES"]), int(given["ACI_JAX_PROCESS_ID"])
        if not 0 <= i < n:
            raise ConfigError(f"ACI_JAX_PROCESS_ID={i}: valid ids are 0..{n - 1} (ACI_JAX_NUM_PROCESSES={n})")
        if n > 1:
            _collectives()
            jax.distributed.initialize(given["ACI_JAX_COORDINATOR"], num_processes=n, process_id=i)
    elif slurm_tasks() > 1:
        _collectives()
        jax.distributed.initialize()
    if jax.process_count() > 1:
        print(f"[dist] process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
              f"of {jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)


def _collectives() -> None:
    # CPU collectives between processes (the CPU runs; on GPUs NCCL's are used and this is moot)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def is_writer() -> bool:
    return jax.process_index() == 0


def share(tree: Any) -> Any:
    """Process 0's `tree` (host arrays, the same shapes on every process) on every process, as numpy."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    wire = multihost_utils.broadcast_one_to_all([_wire(x) for x in leaves])
    return treedef.unflatten([_unwire(w, x) for w, x in zip(wire, leaves)])


def _wire(x) -> np.ndarray:
    """8-byte values as pairs of uint32 (a broadcast without x64 would round float64 to float32)."""
    x = np.asarray(x)
    return np.ascontiguousarray(x).reshape(-1).view(np.uint32) if x.dtype.itemsize == 8 else x


def _unwire(w, like) -> np.ndarray:
    like = np.asarray(like)
    w = np.asarray(w)
    return w.astype(np.uint32).view(like.dtype).reshape(like.shape) if like.dtype.itemsize == 8 else w.astype(like.dtype)


def all_ok(ok: bool) -> bool:
    """Whether every process says ok (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([ok]), tiled=True)))


def on_writer(fn: Callable[[], Any]) -> Any:
    """`fn()` on process 0 (None elsewhere). Every process calls it; when `fn` fails, process 0
    raises its error and the others `PeerFailed`, so all stop together."""
    if jax.process_count() == 1:
        return fn()
    out, err = None, None
    if is_writer():
        try:
            out = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the others know
            err = e
    code = share(np.int32(0 if err is None else 2 if isinstance(err, ConfigError) else 1))
    if err is not None:
        err.shared = True
        raise err
    if int(code):
        e = PeerFailed(f"process 0 failed ({'a config error' if int(code) == 2 else 'an error'}; its log says "
                       f"why): process {jax.process_index()} stops too")
        e.shared = True
        raise e
    return out


@contextlib.contextmanager
def stop_together():
    """Around a multi-process command: an error raised on this process alone (not through
    `on_writer`) ends the process at once, after its traceback, so that the others stop too."""
    try:
        yield
    except BaseException as e:
        if jax.process_count() == 1 or getattr(e, "shared", False) or (isinstance(e, SystemExit) and not e.code):
            raise
        traceback.print_exc()
        print(f"[dist] process {jax.process_index()} failed alone ({type(e).__name__}): exiting now so that "
              f"JAX's distributed service stops the other processes", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)

"""Orbax checkpoints of a whole `TrainState` (params, optimiser, envs, rng, counters).

Saved by env steps in `<run_dir>/checkpoints/<env_steps>`; orbax writes atomically (tmp dir, then
rename), and `max_to_keep` bounds the folder. `restore_newest` restores the newest step that reads
back: a step whose files are damaged (a truncated or deleted data file) is skipped with one line
saying why, and moved aside to `unreadable-<step>` by a run that holds the folder, so the run redoes
it; a step whose shapes differ from the config's is a ConfigError (a config change, not damage).
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import os
import re
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

logging.set_verbosity(logging.WARNING)  # orbax logs every step of a save at INFO


class _NoTraceback(pylogging.Filter):
    """orbax logs a failed save (a full disk) from each of its threads with a traceback before the
    error reaches the caller, who reports it: keep those log lines, drop their tracebacks."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


logging.get_absl_logger().addFilter(_NoTraceback())


def _closed_loop(value) -> bool:
    return type(value) is RuntimeError and str(value) == "Event loop is closed"


def _quiet_closed_loop(excepthook, unraisablehook):
    """After a failed save or restore, orbax closes its event loop while tensorstore reads or writes
    are still in flight; as each finishes, tensorstore reports the `RuntimeError('Event loop is
    closed')` of its callback (dozens of tracebacks that say nothing: the failure itself is raised
    to the caller). Drop exactly those."""
    sys.excepthook = lambda kind, value, tb: None if _closed_loop(value) else excepthook(kind, value, tb)
    sys.unraisablehook = lambda u: None if _closed_loop(u.exc_value) else unraisablehook(u)


_quiet_closed_loop(sys.excepthook, sys.unraisablehook)

from aci_jax.config import ConfigError
from aci_jax.runs import naming_errors


def manager(directory: Path, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
    """A manager of `directory`. In a multi-process run (aci_jax.distributed) only process 0 uses
    managers, on host (numpy) data: orbax is told so, and syncs no other process."""
    if jax.process_count() == 1:
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                     item_handlers=ocp.StandardCheckpointHandler())
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    Path(directory).mkdir(parents=True, exist_ok=True)  # orbax's create=True syncs every process
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False, multiprocessing_options=alone)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler(multiprocessing_options=alone))


def has_steps(directory: Path) -> bool:
    """Whether `directory` holds step folders (`<directory>/<step>`), without opening a manager."""
    return Path(directory).is_dir() and any(p.name.isdigit() for p in Path(directory).iterdir())


def _flat(state: Any) -> dict:
    """Non-empty leaves keyed by their tree path (orbax cannot save zero-size arrays)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {re.sub(r"\W+", "_", jax.tree_util.keystr(p)).strip("_"): x for p, x in leaves if np.size(x)}


@contextlib.contextmanager
def disk_errors(directory: Path):
    """A failed write of orbax/tensorstore (a full or read-only disk: a ValueError saying
    `os_error_code=N`) as the OSError it is, so the commands report it in one line."""
    try:
        with naming_errors(directory):
            yield
    except OSError:
        raise
    except Exception as e:
        code = re.search(r"os_error_code='?(\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(directory)) from e


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Save `state` at `step` and wait for it (a later crash keeps this one whole)."""
    with disk_errors(mngr.directory):
        mngr.save(int(step), args=ocp.args.StandardSave(_flat(state)), force=True)
        mngr.wait_until_finished()


def close(mngr: ocp.CheckpointManager) -> None:
    """Close `mngr` (it waits for a pending save: its errors as in `save`)."""
    with disk_errors(mngr.directory):
        mngr.close()


def restore(mngr: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """The checkpoint at `step`, restored into the structure, shapes and dtypes of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _flat(like))
    return _unflat(like, mngr.restore(int(step), args=ocp.args.StandardRestore(abstract)))


def _unflat(like: Any, flat: dict) -> Any:
    """`like`'s structure holding the values of `flat` (its zero-size leaves kept as they are)."""
    paths, tree = jax.tree_util.tree_flatten_with_path(like)
    values = iter(flat[k] for k in _flat(like))
    return tree.unflatten([next(values) if np.size(x) else x for _, x in paths])


class ShapeMismatch(ConfigError):
    """A checkpoint of another config (shapes differ)."""


def steps(directory: Path) -> list[int]:
    """Step numbers of `directory`'s step folders, newest first."""
    d = Path(directory)
    return sorted((int(p.name) for p in d.iterdir() if p.name.isdigit()), reverse=True) if d.is_dir() else []


def _check_shapes(mngr: ocp.CheckpointManager, step: int, like_flat: dict, where: str) -> None:
    """ShapeMismatch naming the first leaf whose saved shape differs from `like_flat`'s."""
    tree = mngr.item_metadata(step).tree
    for k, x in like_flat.items():
        if k not in tree:
            raise ShapeMismatch(f"{where}: holds no {k!r}: saved by another config")
        if tuple(tree[k].shape) != tuple(np.shape(x)):
            raise ShapeMismatch(f"{where}: {k!r} has shape {tuple(tree[k].shape)}, this config's is "
                                f"{tuple(np.shape(x))}: saved by another config")


def _reason(e: BaseException) -> str:
    """The first line of the error at the root of `e` (orbax wraps tensorstore's, which says what
    is wrong, in one that says only which array it was reading)."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:300]}"


def restore_newest(directory: Path, like: Any, move_aside: bool = True,
                   only_params: bool = False) -> tuple[Any, int] | None:
    """(state structured like `like`, step) of the newest step of `directory` that reads back, or
    None when there is none. Unreadable steps are skipped with one line; with `move_aside` (the run
    holding the folder) they are renamed `unreadable-<step>` so the run redoes and re-saves them.
    `only_params`: restore only `{'params': like}` from a TrainState or best/ checkpoint."""
    directory = Path(directory).absolute()
    target = {"params": like} if only_params else like
    like_flat = _flat(target)
    for step in steps(directory):
        where = f"{directory}/{step}"
        mngr = manager(directory, None)
        try:
            try:
                _check_shapes(mngr, step, like_flat, where)
            except ShapeMismatch:
                raise
            except Exception as e:  # metadata unreadable: damaged
                raise _Damaged(_reason(e)) from None
            try:
                if only_params:
                    flat = mngr.restore(step, args=ocp.args.StandardRestore())
                    state = _unflat(target, flat)["params"]
                else:
                    state = restore(mngr, step, like)
                state = jax.block_until_ready(state)
            except Exception as e:
                raise _Damaged(_reason(e)) from None
            return state, step
        except _Damaged as e:
            note = ""
            if move_aside:
                aside = directory / f"unreadable-{step}"
                n = 1
                while aside.exists():
                    aside, n = directory / f"unreadable-{step}.{n}", n + 1
                (directory / str(step)).rename(aside)
                note = f"; moved to {aside.name}"
            print(f"[run] skipping checkpoint {where}: unreadable ({e}){note}", flush=True)
        finally:
            mngr.close()
    return None


class _Damaged(Exception):
    pass


def load_params(path: str | Path, like: Any) -> tuple[Any, int]:
    """(params, step): only the `params` (structured like `like`) of a checkpoint of a TrainState or
    of `{'params': ...}` (best/), so the env state's layout may differ. `path`: a run folder, its
    `checkpoints/` (latest step) or one step's folder; ConfigError naming it when missing or
    incompatible."""
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise ConfigError(f"checkpoint path {str(path)!r} does not exist")
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if not (path.name.isdigit() and not has_steps(path)):  # a folder of steps: the newest readable
        try:
            found = restore_newest(path, like, move_aside=False, only_params=True)
        except ShapeMismatch as e:
            raise ConfigError(f"checkpoint path {str(path)!r} is not a compatible checkpoint of this "
                              f"config ({e})") from None
        if found is None:
            raise ConfigError(f"checkpoint path {str(path)!r} holds no readable checkpoint")
        return found
    mngr = None
    try:
        mngr, step = manager(path.parent, None), int(path.name)
        flat = mngr.restore(int(step), args=ocp.args.StandardRestore())
        for k, x in _flat({"params": like}).items():
            if k not in flat or np.shape(flat[k]) != np.shape(x):
                found = np.shape(flat[k]) if k in flat else "nothing"
                raise ValueError(f"parameter {k!r}: expected shape {np.shape(x)}, found {found}")
        return _unflat({"params": like}, flat)["params"], step
    except ConfigError:
        raise
    except Exception as e:  # orbax: missing keys, shape or dtype mismatch, not a checkpoint
        raise ConfigError(f"checkpoint path {str(path)!r} is not a compatible checkpoint of this "
                          f"config ({type(e).__name__}: {str(e)[:300]})") from None
    finally:
        if mngr is not None:
            mngr.close()

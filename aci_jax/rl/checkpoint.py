"""Orbax checkpoints of a whole `TrainState` (params, optimiser, envs, rng, counters).

Saved by env steps in `<run_dir>/checkpoints/<env_steps>`; orbax writes atomically (tmp dir, then
rename), and `max_to_keep` bounds the folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

logging.set_verbosity(logging.WARNING)  # orbax logs every step of a save at INFO

from aci_jax.config import ConfigError


def manager(directory: Path, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def has_steps(directory: Path) -> bool:
    """Whether `directory` holds step folders (`<directory>/<step>`), without opening a manager."""
    return Path(directory).is_dir() and any(p.name.isdigit() for p in Path(directory).iterdir())


def _flat(state: Any) -> dict:
    """Non-empty leaves keyed by their tree path (orbax cannot save zero-size arrays)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {re.sub(r"\W+", "_", jax.tree_util.keystr(p)).strip("_"): x for p, x in leaves if np.size(x)}


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Save `state` at `step` and wait for it (a later crash keeps this one whole)."""
    mngr.save(int(step), args=ocp.args.StandardSave(_flat(state)), force=True)
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """The checkpoint at `step`, restored into the structure, shapes and dtypes of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _flat(like))
    return _unflat(like, mngr.restore(int(step), args=ocp.args.StandardRestore(abstract)))


def _unflat(like: Any, flat: dict) -> Any:
    """`like`'s structure holding the values of `flat` (its zero-size leaves kept as they are)."""
    paths, tree = jax.tree_util.tree_flatten_with_path(like)
    values = iter(flat[k] for k in _flat(like))
    return tree.unflatten([next(values) if np.size(x) else x for _, x in paths])


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
    mngr = None
    try:
        if path.name.isdigit() and not has_steps(path):
            mngr, step = manager(path.parent, None), int(path.name)
        else:
            mngr = manager(path, None)
            step = mngr.latest_step()
        if step is None:
            raise ConfigError(f"checkpoint path {str(path)!r} holds no checkpoint")
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

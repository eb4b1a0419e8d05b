"""Run folders that cannot be broken: one layer for `train`, `eval`, `rollout` and `evo`.

`RunFolder.open(path, cfg, kind)` creates or reopens a run folder:
- an exclusive lock (`run.lock`, `flock`): a second process gets `RunLocked` naming the holder's pid
  and host at once; the kernel drops the lock when its holder dies, so a killed run's folder is
  taken over without any clean-up;
- `run.json` (the kind of run: a rollout never writes into a training run's folder) and
  `config.yaml`, written once at creation; on resume the new config is compared with it: a key
  that differs is a ConfigError naming each key with both values, except the keys that only extend a
  run (`EXTENDABLE`: `trainer.total_timesteps`, `evo.num_generations`), the operational ones
  (`OPERATIONAL`: where the run lives, how often it checkpoints, the eval/rollout commands' own
  sections), and those listed in `allow_changes=[key,...]` (the explicit way to force a change);
  accepted changes are written to config.yaml and every start is recorded in `starts.jsonl`;
- `.hydra/` (Hydra's `config.yaml`, `overrides.yaml`, `hydra.yaml`) written at creation only.

Logs are JSON lines appended and fsynced one row at a time (`append_jsonl`): a crash leaves at most a
torn last line, which `read_jsonl` skips with a warning naming the file; rewriting a log (dropping
the rows of a killed run beyond its checkpoint) goes through a temporary file and an atomic rename.
Library code raises `ConfigError` / `RunLocked`; the commands turn them into one line and exit 2.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from omegaconf import DictConfig, OmegaConf, read_write

from aci_jax.config import ConfigError

EXTENDABLE = ("trainer.total_timesteps", "evo.num_generations")
# Keys that say where or how a run is driven, not what it computes: free to change on resume.
OPERATIONAL = ("run_dir", "allow_changes", "allow_cpu", "eval", "rollout", "hydra", "train.checkpoint_every",
               "train.max_to_keep", "evo.checkpoint_every", "evo.sub_batch")
KINDS = ("train", "seeds", "evo", "rollout", "landscape")


class RunError(RuntimeError):
    """A run that cannot go on (diverged training, ...): the command prints it and exits 1."""


class RunLocked(RuntimeError):
    """Another live process holds the run folder."""


@contextlib.contextmanager
def command_errors(command: str):
    """A command's known failures as one line on stderr, no traceback: a config error or a locked
    run folder exits 2; a failed run or a failed write (a full or read-only disk) exits 1, after
    saying that what was saved before is intact and rerunning the command resumes."""
    try:
        yield
    except (ConfigError, RunLocked) as e:
        print(f"config error: {e}" if isinstance(e, ConfigError) else f"{command}: {e}", file=sys.stderr)
        _remove_empty_output_dir()
        raise SystemExit(2) from None
    except RunError as e:
        print(f"{command}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EFBIG):
            raise
        print(f"{command}: cannot write {e.filename or 'to the run folder'}: {e.strerror}. Everything saved "
              f"before (config, logs, the last checkpoint) is intact; free space or fix permissions, then "
              f"rerun the same command to resume.", file=sys.stderr)
        raise SystemExit(1) from None


def _remove_empty_output_dir() -> None:
    """Hydra creates the run folder before the command starts: after a config error nothing was
    written into it, so an empty one is removed (a folder holding anything is left as it is)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        path = Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not under Hydra
        return
    with contextlib.suppress(OSError):
        path.rmdir()  # only an empty folder


class RunFolder:
    """An open, locked run folder (see the module docstring). Use as a context manager or `close()`."""

    def __init__(self, path: Path, cfg: DictConfig, kind: str, fd: int, resumed: bool):
        self.path, self.cfg, self.kind, self._fd, self.resumed = path, cfg, kind, fd, resumed

    # -- opening ------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, cfg: DictConfig, kind: str) -> "RunFolder":
        """Create or reopen `path` for a run of `kind` with config `cfg` (returned as `.cfg`: the
        run's config, i.e. `cfg` once it agrees with the saved one)."""
        if kind not in KINDS:
            raise ValueError(f"run kind {kind!r}; valid: {KINDS}")
        path = Path(path)
        if path.is_dir():  # before touching anything: a folder of another kind is left as it is
            cls._check_kind(path, kind)
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"run_dir={str(path)!r} cannot be created or written ({e.strerror}); "
                              f"choose a writable folder") from None
        try:
            _lock(fd, path)
            run = cls._check_kind(path, kind)
            resumed = (path / "config.yaml").is_file()
            if not resumed:
                _refuse_headless(path)
            _remove_stale_temporaries(path)
            changed = False
            cfg = located(cfg, path)
            if resumed:
                saved = located(OmegaConf.load(path / "config.yaml"), path)
                cfg = _agree(saved, cfg, path)
                changed = any(not _under(k, OPERATIONAL) for k in config_changes(saved, cfg))
            folder = cls(path, cfg, kind, fd, resumed)
            if changed:  # an extended run or an allowed change: config.yaml says what the run is now
                folder.save_config()
            if not resumed:
                atomic_write(path / "run.json", json.dumps({"kind": kind, "created": _now(),
                                                            "host": socket.gethostname()}, indent=1))
                folder.save_config()
                _write_hydra_files(path, cfg)
            elif run is None:
                atomic_write(path / "run.json", json.dumps({"kind": kind, "created": _now()}, indent=1))
            append_jsonl(path / "starts.jsonl", {"time": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                                                 "argv": sys.argv, "resumed": resumed})
        except BaseException:
            os.close(fd)
            raise
        return folder

    @staticmethod
    def _check_kind(path: Path, kind: str) -> dict | None:
        info = path / "run.json"
        if not info.is_file():
            if (path / "config.yaml").is_file() and kind != "train":  # a run saved before run.json
                raise ConfigError(f"run_dir={str(path)!r} holds a run without run.json (a training run); "
                                  f"a {kind} needs its own folder: pass another run_dir")
            return None
        try:
            run = json.loads(info.read_text())
        except ValueError as e:
            raise ConfigError(f"{info}: not JSON ({e}); a run folder's run.json is written once, atomically: "
                              f"restore it or pass another run_dir") from None
        if run.get("kind") != kind:
            raise ConfigError(f"run_dir={str(path)!r} holds a {run.get('kind')} run; a {kind} writes into "
                              f"its own folder: pass another run_dir")
        return run

    def save_config(self) -> None:
        atomic_write(self.path / "config.yaml", OmegaConf.to_yaml(self.cfg))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def located(cfg: DictConfig, path: str | Path) -> DictConfig:
    """A copy of `cfg` whose `run_dir` is the folder it runs in (not the default
    `runs/${expname}/${now:...}`, which resolves only under Hydra and to another folder each time):
    `RunFolder.open(...).cfg`, and what the processes of a multi-process run that do not open the
    folder use."""
    if "run_dir" not in cfg:
        return cfg
    cfg = cfg.copy()
    with read_write(cfg):
        cfg.run_dir = str(Path(path).absolute())
    return cfg


# What only a started run writes: a folder holding any of these (an empty folder does not count: an
# orbax manager pointed at a folder creates it) holds a run
RUN_RECORDS = ("checkpoints", "best", "evolution", "generation", "metrics.jsonl", "evaluations.jsonl",
               "seeds.jsonl", "population.csv", "generations.jsonl", "training.jsonl", "starts.jsonl")


def _refuse_headless(path: Path) -> None:
    """A folder with a run's records or checkpoints but no config.yaml is not a new run: treating it
    as one would continue old checkpoints under whatever config the command gives."""
    held = [n for n in RUN_RECORDS if (path / n).is_file() or ((path / n).is_dir() and any((path / n).iterdir()))]
    if held:
        hydra = path / ".hydra" / "config.yaml"
        how = (f"restore it (the creating command's config is {hydra}: `cp {hydra} {path / 'config.yaml'}`, then "
               f"apply any allow_changes made since)" if hydra.is_file() else "put back the run's config.yaml")
        raise ConfigError(f"run_dir={str(path)!r} holds a run ({', '.join(held)}) but no config.yaml: {how}, "
                          f"or pass another run_dir for a new run")


def _remove_stale_temporaries(path: Path) -> None:
    """`.<name>.tmp-<pid>` files a killed atomic_write left behind (the lock is held: none is live)."""
    for tmp in path.glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
        raise RunLocked(f"run_dir={str(path)!r} is in use by {holder}; wait for it to finish or pass "
                        f"another run_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {_now()}\n".encode(), 0)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


# -- config comparison ------------------------------------------------------------------------------

def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (lists are leaves)."""
    if isinstance(cfg, dict):
        out = {}
        for k, v in cfg.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: cfg}


def _under(key: str, roots: Iterable[str]) -> bool:
    return any(key == r or key.startswith(r + ".") for r in roots)


def config_changes(saved: DictConfig, new: DictConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, new value)} of every leaf that differs (missing: '<absent>').

    A key missing on one side and null (or {} or []) on the other is no change: keys added to the
    configs later default to null, meaning the behaviour from before they existed (e.g.
    `env.render.max_pixels`, `env.physics_impl`)."""
    a = _flat(OmegaConf.to_container(saved, resolve=True))
    b = _flat(OmegaConf.to_container(new, resolve=True))
    empty = lambda v: v is None or v == {} or v == []  # absent, null, {} and [] say the same: nothing
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not (empty(a.get(k)) and empty(b.get(k)))}


def _agree(saved: DictConfig, new: DictConfig, path: Path) -> DictConfig:
    """The config to resume with: `new` when it differs from `saved` only in allowed keys."""
    allowed = [str(k) for k in (new.get("allow_changes") or [])]
    changes = {k: v for k, v in config_changes(saved, new).items()
               if not _under(k, OPERATIONAL) and not _under(k, EXTENDABLE) and not _under(k, allowed)}
    if changes:
        lines = "\n".join(f"  {k}: run has {a!r}, command gives {b!r}" for k, a, b in
                          ((k, *v) for k, v in changes.items()))
        raise ConfigError(
            f"run_dir={str(path)!r} was created with another config; resuming it cannot change:\n{lines}\n"
            f"Resume with the run's values (drop those overrides), pass another run_dir for a new run, "
            f"or force the change with allow_changes=[{','.join(changes)}] (its config.yaml is then updated).")
    return new


# -- files ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def naming_errors(path: Path):
    """A failed write's OSError naming the file (a failed flush on a full disk names none)."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename (fsynced)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming_errors(path), open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.replace(tmp, path)


def json_number(v):
    """A scalar (Python, numpy or jax) as a JSON value: its Python number, None when not finite."""
    v = np.asarray(v).item()
    return None if isinstance(v, float) and not math.isfinite(v) else v


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON line and fsync it: a crash can leave only a torn last line."""
    with naming_errors(path), open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines log; a torn last line (a crash during the append) is skipped with a
    warning; a bad line elsewhere is a ConfigError naming the file and line."""
    if not Path(path).exists():
        return []
    lines = Path(path).read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # one notice (stdout, where the command's progress goes)
                print(f"[run] {path}: skipped a torn last line ({len(line)} characters; a crash during its "
                      f"append)", flush=True)
            else:
                raise ConfigError(f"{path}, line {i + 1}: not JSON ({e}); fix or delete that line") from None
    return rows


def rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    """Replace a log's rows atomically (a crash leaves the old or the new file, never a mix)."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_hydra_files(path: Path, cfg: DictConfig) -> None:
    """`.hydra/` of the creating command: Hydra's `config.yaml`, `overrides.yaml` and `hydra.yaml`
    (Hydra's own writing is off, `hydra.output_subdir: null`, so a later start cannot overwrite them)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:  # not under @hydra.main (API use, tests)
        return
    d = path / ".hydra"
    d.mkdir(exist_ok=True)
    atomic_write(d / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write(d / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task))))
    atomic_write(d / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)})))


def command_run_dir(cfg: DictConfig, command: str | None = None) -> Path:
    """A command's first step: validate `cfg`, check the backend (a GPU asked for but not found is a
    ConfigError; `aci_jax.backend`) and print it, then record its run folder (Hydra's output dir) as
    `cfg.run_dir` and return it. The persistent compilation cache is turned on here
    (`aci_jax.compile_cache`)."""
    from aci_jax import backend, compile_cache
    from aci_jax.config import validate

    validate(cfg)
    backend.check(command or _command_name(), bool(cfg.get("allow_cpu", False)))
    compile_cache.enable()
    run_dir = output_dir(cfg)
    cfg.run_dir = str(run_dir)
    return run_dir


def _command_name() -> str:
    """The running command's short name (`python -m aci_jax.evo` -> evo) for its printed lines."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = (spec.name if spec is not None else "") or Path(sys.argv[0]).stem
    return name.replace("aci_jax.", "").replace(".__main__", "") or "aci_jax"


def output_dir(cfg: DictConfig) -> Path:
    """The run folder of a command: Hydra's output dir (`hydra.run.dir=X`, which defaults to
    `run_dir`), else `run_dir`."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return Path(cfg.run_dir)

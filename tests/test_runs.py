"""Run folders (aci_jax.runs, issue 11), with a real process wherever the behaviour is about
processes: the lock, a resume that would change the run, a corrupted newest checkpoint, torn log
lines, SIGKILL during a log append, full and read-only disks, rollout's own folder, TensorBoard's
purge step on resume, hydra.run.dir."""

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

import aci_jax
from aci_jax import eval as eval_cmd
from aci_jax.config import ConfigError
from aci_jax.rl import checkpoint
from aci_jax.runs import RunFolder, RunLocked, read_jsonl
from aci_jax.train import train_run
from test_train import TINY, _cfg

REPO = Path(aci_jax.__file__).resolve().parent.parent
# Subprocesses import this checkout's aci_jax.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}


def _cmd(command: str, *args) -> list[str]:
    return [sys.executable, "-m", f"aci_jax.{command}", *args]


def _run(command: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(command, *args), capture_output=True, text=True, env=ENV, cwd=REPO,
                          timeout=timeout)


def _train_args(run_dir, *extra) -> list[str]:
    return ["exp=detection", f"run_dir={run_dir}", *TINY, *extra]


def _wait(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def _same_params(a, b) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


def _steps(path: Path) -> list[int]:
    return [r["env_steps"] for r in read_jsonl(path)]


def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


def _snapshot(folder: Path) -> dict:
    """Every file of a folder with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted TINY run (as tests/test_train.py's): 3 iterations, checkpoints 32, 64, 96."""
    run_dir = tmp_path_factory.mktemp("full")
    return run_dir, train_run(_cfg(), run_dir)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A training run folder made by the command (so with .hydra/), placed by `hydra.run.dir`;
    `trainer.mode=test` (no training) keeps it quick."""
    run_dir = tmp_path_factory.mktemp("cli") / "placed"
    res = _run("train", "exp=detection", f"hydra.run.dir={run_dir}", "trainer.mode=test", *TINY)
    assert res.returncode == 0, res.stderr
    return run_dir


# -- 1. two trainings on one folder; a stale lock ----------------------------------------------------

def test_second_training_on_a_held_folder_exits_2_naming_the_holder(full_run, tmp_path):
    holder = subprocess.Popen(_cmd("train", *_train_args(tmp_path)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=ENV, cwd=REPO)
    lock = tmp_path / "run.lock"
    try:
        _wait(lambda: lock.is_file() and lock.read_text().startswith(f"pid {holder.pid} "), holder, "lock")
        t0 = time.monotonic()
        second = _run("train", *_train_args(tmp_path), timeout=60)
        assert time.monotonic() - t0 < 30
        assert second.returncode == 2
        assert f"in use by pid {holder.pid} on host {socket.gethostname()}" in second.stderr
        _no_traceback(second.stderr)
        assert holder.wait(timeout=300) == 0
    finally:
        _kill(holder)
    # The first's files are its own: one start recorded, logs without duplicated rows, its result
    # that of the uninterrupted run.
    assert [s["pid"] for s in read_jsonl(tmp_path / "starts.jsonl")] == [holder.pid]
    assert _steps(tmp_path / "metrics.jsonl") == _steps(tmp_path / "evaluations.jsonl") == [32, 64, 96]
    params, step = checkpoint.load_params(tmp_path / "checkpoints/96", full_run[1]["state"].params)
    assert step == 96
    _same_params(full_run[1]["state"].params, params)


def test_a_killed_holders_lock_is_taken_over_and_the_run_extended(full_run, tmp_path, capsys):
    """A process holding the folder is SIGKILLed (run.lock still names it); a new training takes
    the folder over and resumes; a larger trainer.total_timesteps extends the run."""
    run_dir = tmp_path / "run"
    shutil.copytree(full_run[0], run_dir)
    code = ("import sys, time; from omegaconf import OmegaConf; from aci_jax.runs import RunFolder; "
            "p = sys.argv[1]; RunFolder.open(p, OmegaConf.load(p + '/config.yaml'), 'train'); "
            "print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              env=ENV, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"pid {holder.pid} on host"):
            RunFolder.open(run_dir, _cfg(), "train")
    finally:
        _kill(holder)
    assert (run_dir / "run.lock").read_text().startswith(f"pid {holder.pid} ")  # stale
    resumed = train_run(_cfg("trainer.total_timesteps=128"), run_dir)
    assert "resuming from step 96" in capsys.readouterr().out
    assert resumed["iterations"] == 1 and int(resumed["state"].env_steps) == 128
    assert (run_dir / "run.lock").read_text().startswith(f"pid {os.getpid()} ")
    assert OmegaConf.load(run_dir / "config.yaml").trainer.total_timesteps == 128  # what the run is now
    assert _steps(run_dir / "metrics.jsonl") == [32, 64, 96, 128]


# -- 2. resume with a changed config ------------------------------------------------------------------

def test_resume_that_changes_the_run_exits_2_and_leaves_it_as_it_was(cli_run):
    before = _snapshot(cli_run)
    res = _run("train", "exp=detection", f"run_dir={cli_run}", "trainer.mode=test", *TINY,
               "env.agents.agent.eyes.resolution=[3,3]", "trainer.learning_rate=1e9")
    assert res.returncode == 2
    _no_traceback(res.stderr)
    assert "env.agents.agent.eyes.resolution: run has [2, 2], command gives [3, 3]" in res.stderr
    assert "trainer.learning_rate: run has 0.001, command gives 1000000000.0" in res.stderr
    assert "allow_changes=[env.agents.agent.eyes.resolution,trainer.learning_rate]" in res.stderr
    after = _snapshot(cli_run)
    for name in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml", "starts.jsonl", "run.json"):
        assert after[name] == before[name], name


@pytest.mark.parametrize("override, message", [
    ("env.agents.agent.eyes.resolution=[3,3]", r"env\.agents\.agent\.eyes\.resolution: run has \[2, 2\], command gives \[3, 3\]"),
    ("trainer.learning_rate=1e9", r"trainer\.learning_rate: run has 0\.001, command gives 1000000000\.0")])
def test_resume_with_a_changed_key_is_a_config_error(full_run, override, message):
    run_dir = full_run[0]
    before = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match=message):
        train_run(_cfg(override), run_dir)
    assert (run_dir / "config.yaml").read_bytes() == before


def test_allow_changes_forces_a_change_and_records_it(full_run, tmp_path):
    shutil.copytree(full_run[0], tmp_path / "run")
    forced = _cfg("trainer.learning_rate=0.5", "allow_changes=[trainer.learning_rate]")
    with RunFolder.open(tmp_path / "run", forced, "train") as folder:
        assert folder.resumed and folder.cfg.trainer.learning_rate == 0.5
    assert OmegaConf.load(tmp_path / "run/config.yaml").trainer.learning_rate == 0.5
    assert read_jsonl(tmp_path / "run/starts.jsonl")[-1]["resumed"]
    with pytest.raises(ConfigError, match="trainer.learning_rate: run has 0.5, command gives 0.001"):
        RunFolder.open(tmp_path / "run", _cfg(), "train")  # the run's config is now the forced one


# -- 3. a corrupted newest checkpoint; 8. TensorBoard's purge step -----------------------------------

def _tb_steps(tb_dir: Path, tag: str) -> list[int]:
    """The steps of `tag`'s scalars as TensorBoard shows them: event files in name order, and a
    SessionLog START at step s (a writer's purge_step) drops the events at steps >= s before it."""
    from tensorboardX.proto import event_pb2

    steps = []
    for f in sorted(tb_dir.glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos + 12 <= len(data):  # TFRecord: length, its crc, the event, its crc
            n = struct.unpack("<Q", data[pos:pos + 8])[0]
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 16 + n
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                steps = [s for s in steps if s < event.step]
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def test_corrupt_newest_checkpoint_is_skipped_moved_aside_and_redone(full_run, tmp_path, capsys):
    run_dir = tmp_path
    train_run(_cfg(), run_dir, stop_after=2)
    assert checkpoint.steps(run_dir / "checkpoints") == [64, 32]
    # orbax's layout: <step>/default/ holds the OCDBT database; its array data is in
    # ocdbt.process_0/d/ (the largest file holds the arrays). Truncate it.
    data = max((run_dir / "checkpoints/64/default/ocdbt.process_0/d").iterdir(), key=lambda p: p.stat().st_size)
    os.truncate(data, data.stat().st_size // 2)
    capsys.readouterr()

    last = eval_cmd.main([f"run_dir={run_dir}", "eval.params=last"])  # reads only: moves nothing
    skipped = [ln for ln in capsys.readouterr().out.splitlines() if "skipping checkpoint" in ln]
    assert len(skipped) == 1 and f"{run_dir}/checkpoints/64: unreadable" in skipped[0]
    assert last["env_steps"] == 32 and (run_dir / "checkpoints/64").is_dir()

    resumed = train_run(_cfg(), run_dir)
    out = capsys.readouterr().out.splitlines()
    skipped = [ln for ln in out if "skipping checkpoint" in ln]
    assert len(skipped) == 1 and f"{run_dir}/checkpoints/64: unreadable" in skipped[0]
    assert "moved to unreadable-64" in skipped[0]
    assert any("resuming from step 32" in ln for ln in out)
    _same_params(full_run[1]["state"].params, resumed["state"].params)
    assert checkpoint.steps(run_dir / "checkpoints") == [96, 64, 32]
    assert (run_dir / "checkpoints/unreadable-64").is_dir()
    assert _steps(run_dir / "metrics.jsonl") == _steps(run_dir / "evaluations.jsonl") == [32, 64, 96]
    # TensorBoard: the first start's events after step 32 are purged, step 32's own are kept.
    assert _tb_steps(run_dir / "tb", "train/policy_loss") == [32, 64, 96]
    assert _tb_steps(run_dir / "tb", "eval/mean_return") == [32, 64, 96]


# -- 4. torn and bad log lines; 5. SIGKILL during the log append --------------------------------------

def test_torn_last_log_line_is_dropped_and_a_bad_middle_line_is_a_config_error(full_run, tmp_path, capsys):
    train_run(_cfg(), tmp_path, stop_after=2)
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "a") as f:  # what a crash during the third row's append leaves
        f.write(json.dumps({"env_steps": 96, "policy_loss": 0.5})[:20])
    resumed = train_run(_cfg(), tmp_path)
    out = capsys.readouterr().out
    assert f"{metrics}: skipped a torn last line" in out and "resuming from step 64" in out
    _same_params(full_run[1]["state"].params, resumed["state"].params)
    lines = metrics.read_text().splitlines()
    assert [json.loads(ln)["env_steps"] for ln in lines] == [32, 64, 96]  # one run, every line whole

    lines[1] = lines[1][:30]
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=f"{metrics}, line 2: not JSON"):
        read_jsonl(metrics)
    with pytest.raises(ConfigError, match=f"{metrics}, line 2: not JSON"):
        train_run(_cfg(), tmp_path)


def _mid_append(log: Path) -> bool:
    """Whether `log` holds a few rows and ends inside one (an append in progress)."""
    if not log.is_file() or log.stat().st_size < 3 << 20:
        return False
    with open(log, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def test_sigkill_during_log_appends_leaves_whole_rows(tmp_path):
    """A process appends 1 MB rows in a loop and is SIGKILLed while its file ends inside a row."""
    log = tmp_path / "log.jsonl"
    code = ("import sys; from pathlib import Path; from aci_jax.runs import append_jsonl\n"
            "p, i = Path(sys.argv[1]), 0\n"
            "while True:\n"
            "    append_jsonl(p, {'i': i, 'pad': 'x' * (1 << 20)}); i += 1\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(log)], env=ENV, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not _mid_append(log):
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.0002)
    finally:
        _kill(writer)
    text = log.read_text()
    rows = read_jsonl(log)
    assert len(rows) == text.count("\n") >= 2  # every whole row; the torn last one skipped
    assert [r["i"] for r in rows] == list(range(len(rows)))
    assert all(len(r["pad"]) == 1 << 20 for r in rows)


# -- 6. full and read-only disks ---------------------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (skips the test where mounting is not permitted)."""
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to make a full or read-only disk (needs root with "
                    f"CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(disk: Path) -> None:
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * (1 << 16))
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_plot_on_a_full_disk_names_its_file(tmp_path, capsys):
    """A figure written to a full disk fails at the flush (matplotlib's OSError names no file): the
    error names the plot, and a command turns it into one line saying which file and that rerunning
    resumes (issue 25)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aci_jax.runs import command_errors
    from aci_jax.viz import save_figure

    with _tmpfs(tmp_path / "disk", "1m") as disk:
        target = disk / "plots" / "fitness.png"
        target.parent.mkdir()
        _fill(disk)
        fig, ax = plt.subplots()
        ax.plot(range(1000))
        with pytest.raises(SystemExit) as e, command_errors("evo"):
            save_figure(fig, target)
        assert e.value.code == 1
    err = capsys.readouterr().err
    assert f"evo: cannot write {target}: No space left on device" in err and "rerun the same command" in err


def test_full_disk_exits_1_with_a_clear_message_and_the_last_checkpoint_resumes(full_run, tmp_path, capsys):
    """The disk fills after the first checkpoint: the training's next write fails (a log append or
    an orbax save), it exits 1 with one line; the folder, moved to a disk with space, resumes from
    its last checkpoint and ends where the uninterrupted run does."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with _tmpfs(tmp_path / "disk", "16m") as disk:
        run_dir = disk / "run"
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen(_cmd("train", *_train_args(run_dir)), stdout=o, stderr=e, env=ENV, cwd=REPO)
            try:
                _wait(lambda: checkpoint.steps(run_dir / "checkpoints"), proc, "first checkpoint")
                _fill(disk)
                assert proc.wait(timeout=300) == 1
            finally:
                _kill(proc)
        stderr = err.read_text()
        _no_traceback(stderr)
        assert "No space left on device" in stderr and "rerun the same command to resume" in stderr
        last = checkpoint.steps(run_dir / "checkpoints")[0]
        shutil.copytree(run_dir, tmp_path / "moved")
    capsys.readouterr()
    resumed = train_run(_cfg(), tmp_path / "moved")
    printed = capsys.readouterr().out
    assert f"resuming from step {last}" in printed and "skipping checkpoint" not in printed  # intact
    _same_params(full_run[1]["state"].params, resumed["state"].params)
    assert _steps(tmp_path / "moved/metrics.jsonl") == [32, 64, 96]


def test_read_only_disk_is_a_clear_error_and_loses_nothing(full_run, tmp_path, capsys):
    with _tmpfs(tmp_path / "disk", "16m") as disk:
        run_dir = disk / "run"
        shutil.copytree(full_run[0], run_dir)
        before = _snapshot(run_dir)
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode == 0
        res = _run("train", *_train_args(run_dir))
        assert res.returncode == 2, res.stderr
        _no_traceback(res.stderr)
        assert "cannot be created or written (Read-only file system)" in res.stderr
        with pytest.raises(SystemExit) as e:  # eval reads, then cannot write its report
            eval_cmd.main([f"run_dir={run_dir}", "eval.params=last"])
        assert e.value.code == 1
        assert "Read-only file system" in capsys.readouterr().err
        assert _snapshot(run_dir) == before


# -- 7. rollout never writes into a training run's folder; 9. hydra.run.dir ---------------------------

def test_rollout_refuses_a_training_runs_folder_without_touching_it(cli_run):
    before = _snapshot(cli_run)
    res = _run("rollout", "exp=detection", f"run_dir={cli_run}", "rollout.n_envs=2", "rollout.n_steps=2")
    assert res.returncode == 2
    _no_traceback(res.stderr)
    assert f"run_dir='{cli_run}' holds a train run; a rollout writes into its own folder" in res.stderr
    assert _snapshot(cli_run) == before  # not even run.lock or a Hydra log file


def test_hydra_run_dir_is_the_run_folder(cli_run):
    assert OmegaConf.load(cli_run / "config.yaml").run_dir == str(cli_run)
    assert json.loads((cli_run / "run.json").read_text())["kind"] == "train"
    assert (cli_run / ".hydra/config.yaml").is_file() and (cli_run / "fitness.json").is_file()
    assert [s["resumed"] for s in read_jsonl(cli_run / "starts.jsonl")] == [False]

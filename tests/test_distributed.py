"""One evolution as one multi-process JAX program (aci_jax.distributed): 2 processes on this CPU,
joined through ACI_JAX_COORDINATOR / ACI_JAX_NUM_PROCESSES / ACI_JAX_PROCESS_ID, train a tiny
evolution's population between them and write the records of a one-process run, once; a config
error on process 0 stops both; the same through the launcher as 2 tasks of one job on the one-node
Slurm of scripts/slurm-local.sh (skipped when `sbatch` is not on PATH)."""

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import aci_jax
from aci_jax.evo.run import evolve, read_population

from test_evo import TINY
from test_launch import _wait, launcher, slurm  # noqa: F401 - slurm: the one-node Slurm fixture

REPO = Path(aci_jax.__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(n: int, overrides: list[str], devices: int = 1, timeout: float = 900) -> list[subprocess.CompletedProcess]:
    """`python -m aci_jax.evo` as `n` processes of one JAX program, each with `devices` CPU devices."""
    port = _free_port()
    procs = []
    for i in range(n):
        env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip(),
               "ACI_JAX_COORDINATOR": f"localhost:{port}", "ACI_JAX_NUM_PROCESSES": str(n), "ACI_JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen([sys.executable, "-m", "aci_jax.evo", *overrides], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    d = tmp_path_factory.mktemp("one_process")
    evolve(aci_jax.load_config("detection", TINY), d)
    return d


def test_two_processes_write_the_records_of_one(one_process, tmp_path):
    # Over 60 s (~3.5 min): two fresh processes each compile the tiny evolution's sharded program:
    # the one real-training path of the multi-process evolution (the others are in test mode).
    run = tmp_path / "run"
    p0, p1 = run_processes(2, ["exp=detection", *TINY, f"run_dir={run}"])
    assert p0.returncode == 0 and p1.returncode == 0, (p0.stderr[-2000:], p1.stderr[-2000:])
    assert "[dist] process 1 of 2: 1 local of 2 cpu device(s)" in p1.stdout
    assert "sub-batches of 4 individuals on 2 cpu device(s)" in p0.stdout
    a, b = read_population(one_process / "population.csv"), read_population(run / "population.csv")
    assert len(b) == 3 and [r["seed"] for r in a] == [r["seed"] for r in b]  # process 0 alone wrote: no duplicates
    for ra, rb in zip(a, b):
        assert ra["gene_width"] == rb["gene_width"]
        assert float(ra["fitness"]) == pytest.approx(float(rb["fitness"]), rel=1e-4, abs=1e-4)
    lines = lambda p: p.read_text().splitlines()
    assert len(lines(run / "training.jsonl")) == len(lines(one_process / "training.jsonl"))
    assert len(lines(run / "generations.jsonl")) == 1 and len(lines(run / "starts.jsonl")) == 1
    assert json.loads(lines(run / "starts.jsonl")[0])["pid"] != 0 and (run / "best" / "best.json").exists()


def test_a_config_error_on_process_0_stops_every_process(one_process):
    """Resuming the one-process run with another config: process 0 (which alone opens the run
    folder) refuses; process 1, waiting for it, stops too instead of hanging in a collective."""
    p0, p1 = run_processes(2, ["exp=detection", *TINY, "trainer.learning_rate=0.1", f"run_dir={one_process}"],
                           timeout=300)
    assert p0.returncode == 2 and "config error: run_dir=" in p0.stderr and "trainer.learning_rate" in p0.stderr
    assert p1.returncode == 1 and "process 0 failed (a config error" in p1.stderr


def test_two_slurm_tasks_run_one_evolution(slurm, tmp_path):
    """The launcher's multi-task job on the one-node Slurm of scripts/slurm-local.sh: 2 srun tasks
    (`tasks_per_node=2`; on a GPU cluster `--nodes N --gpus-per-node G`) join through Slurm's
    environment and write the records of one process. Test mode (synthetic fitness): what Slurm adds
    is the joining and the one writer; two processes training for real is the test above."""
    run = tmp_path / "run"
    evo = ["exp=detection", "trainer.mode=test", "evo.num_generations=3", "evo.population_size=4"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert launcher.main(["--cluster", "localhost", "--set", "tasks_per_node=2", "--set", "mem_gb=6", "evo", *evo,
                              f"run_dir={run}"]) == 0
    (jid,) = re.findall(r"job (\d+):", buf.getvalue())
    with contextlib.redirect_stdout(io.StringIO()):
        evolve(aci_jax.load_config("detection", evo[1:]), tmp_path / "one")
    (job,) = _wait(jid, timeout=600)
    logs = {t: (run / "slurm" / f"{jid}_{t}_log.out").read_text() for t in (0, 1)}
    assert job["JobState"] == "COMPLETED", logs[0][-3000:]
    assert "[dist] process 1 of 2" in logs[1] and "[dist] process 0 of 2" in logs[0]
    assert (run / "population.csv").read_text() == (tmp_path / "one" / "population.csv").read_text()
    assert len((run / "starts.jsonl").read_text().splitlines()) == 1


def test_several_tasks_run_only_an_evolution(capsys):
    code = launcher.main(["--cluster", "euler", "--dry-run", "--nodes", "2", "--gpus-per-node", "4", "train", "exp=quick"])
    assert code == 2 and "train runs as one task, this launch has 8 (2 node(s) x 4 task(s))" in capsys.readouterr().err


def test_local_launch_of_two_tasks_runs_one_evolution(tmp_path, capsys):
    """`--cluster local --set tasks_per_node=2`: submitit's local executor starts 2 tasks whose
    commands join through the ACI_JAX_* variables the job sets (test mode: synthetic fitness)."""
    run = tmp_path / "run"
    code = launcher.main(["--cluster", "local", "--set", "tasks_per_node=2", "evo", "exp=quick", "trainer.mode=test",
                          "evo.num_generations=3", f"run_dir={run}"])
    assert code == 0, capsys.readouterr().err[-2000:]
    logs = sorted((run / "slurm").glob("*_1_log.out"))
    assert logs and "[dist] process 1 of 2" in logs[0].read_text()
    assert len((run / "generations.jsonl").read_text().splitlines()) == 3
    assert len(read_population(run / "population.csv")) == 3 * 4 and len((run / "starts.jsonl").read_text().splitlines()) == 1

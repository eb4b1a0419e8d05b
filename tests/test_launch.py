"""launch/slurm.py and sweeps: profiles and their errors, --dry-run, --local, Hydra multirun folders and
summary; and, through real `sbatch` on the one-node Slurm of scripts/slurm-local.sh (started here
when it is not running; the Slurm tests skip only when `sbatch` is not on PATH): a tiny training
job, a test-mode evolution, the same evolution requeued twice in the middle (submitit's
checkpoint-and-requeue on USR2, then `scontrol requeue`) ending with the same records, and a 2×2
sweep as one array with a parallelism limit and its summary job.

All Slurm jobs are submitted at once by one module fixture, so they run while the tests wait."""

import contextlib
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import aci_jax
from aci_jax.cluster import Profile, load_profile, make_plan, slurm_parameters
from aci_jax.config import ConfigError
from aci_jax.sweep import main as sweep_main

REPO = Path(aci_jax.__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("launch_slurm", REPO / "launch" / "slurm.py")
launcher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launcher)

# tests/test_train.py's TINY, one iteration: the cheapest real training
TINY = ["env.agents.agent.eyes.resolution=[2,2]", "env.render.supersample=1", "env.n_envs=4",
        "env.max_episode_steps=16", "env.frame_stack=2", "trainer.n_steps=8", "trainer.n_minibatches=2",
        "trainer.n_epochs=1", "trainer.total_timesteps=32", "train.checkpoint_every=1", "train.eval_every=1",
        "train.eval_envs=4", "train.final_eval_envs=8", "env.render.view_size=32"]
EVO = ["exp=quick", "trainer.mode=test", "evo.num_generations=30"]  # synthetic fitness: ~0.5 s a generation
GRID = ["exp=detection", "trainer.mode=test", "seed=0,1", "env.agents.agent.eyes.resolution=[1,1],[4,4]"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


def launch(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = launcher.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _strip(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in ("wall_s", "env_steps_per_s")}
            for x in path.read_text().splitlines()]


# -- profiles, errors, --dry-run (no Slurm needed) -------------------------------------------------------

def test_profiles_carry_the_original_clusters_settings():
    sc = load_profile("supercloud")
    assert (sc.partition, sc.constraint, sc.gres, sc.timeout_min) == ("xeon-g6-volta", "xeon-g6", "gpu:volta:1", 1440)
    om = slurm_parameters(load_profile("openmind"), "x")
    assert (om["partition"], om["qos"], om["gres"], om["mem_per_cpu"]) == ("normal", "normal", "gpu:1", "6G")
    eu = load_profile("euler", ["exclude=eu-g1-001,eu-g1-002", "gpus_per_node=4", "nodes=2"])
    assert (eu.partition, eu.exclude, eu.gres, eu.tasks) == ("research", "eu-g1-001,eu-g1-002", "gpu:4", 4)
    assert load_profile("local").executor == "local"


def test_a_profile_from_a_path_and_bad_profiles(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("partition: gpu\ngpus_per_node: 2\ntimeout_min: 90\n")
    assert load_profile(str(p), ["partition=a100"]) == Profile("mine", partition="a100", gpus_per_node=2, timeout_min=90)
    p.write_text("partitoin: gpu\n")
    with pytest.raises(ConfigError, match=r"unknown profile field\(s\) \['partitoin'\]; valid: \['executor', 'partition'"):
        load_profile(str(p))
    with pytest.raises(ConfigError, match="timeout_min='long' must be an integer"):
        load_profile("euler", ["timeout_min=long"])
    with pytest.raises(ConfigError, match="nodes=0 must be >= 1"):
        load_profile("euler", ["nodes=0"])


def test_cli_errors_exit_2_naming_the_valid_values(capsys):
    code, _, err = launch(capsys, "--cluster", "nope", "train")
    assert code == 2 and "unknown cluster 'nope'; valid: ['euler', 'local', 'localhost', 'openmind'" in err
    code, _, err = launch(capsys, "--cluster", "euler", "--set", "partiton=gpu", "train")
    assert code == 2 and "unknown profile field(s) ['partiton']; valid: ['executor', 'partition'" in err
    code, _, err = launch(capsys, "--cluster", "euler", "train", "trainer.learning_rat=1")
    assert code == 2 and "trainer.learning_rat" in err
    code, _, err = launch(capsys, "--cluster", "euler", "eval")
    assert code == 2 and "eval needs run_dir=" in err
    assert "Traceback" not in err
    proc = subprocess.run([sys.executable, "launch/slurm.py", "--cluster", "nope", "evo"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "valid: [" in proc.stderr and "Traceback" not in proc.stderr


def test_devices_are_the_jobs_nodes_not_the_login_nodes(capsys, tmp_path):
    """evo.devices=4 on a 4-GPU job is valid though this (login) node has one CPU device: the launcher
    leaves the device count to the command on the job's node; every other value it still checks."""
    code, out, err = launch(capsys, "--cluster", "euler", "--dry-run", "--gpus-per-node", "4", "evo", "exp=quick",
                            "evo.devices=4", f"run_dir={tmp_path / 'r'}")
    assert code == 0 and "evo.devices=4" in out, err
    code, _, err = launch(capsys, "--cluster", "euler", "--dry-run", "evo", "exp=quick", "evo.devices=0")
    assert code == 2 and "evo.devices" in err


def test_dry_run_prints_the_batch_script_and_submits_nothing(capsys, tmp_path):
    run = tmp_path / "r"
    code, out, _ = launch(capsys, "--cluster", "supercloud", "--dry-run", "--nodes", "2", "--gpus-per-node", "2",
                          "evo", "exp=quick", f"run_dir={run}")
    assert code == 0
    for line in ("#SBATCH --partition=xeon-g6-volta", "#SBATCH --constraint=xeon-g6", "#SBATCH --gres=gpu:volta:2",
                 "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --time=1440", "#SBATCH --requeue",
                 "#SBATCH --signal=USR2@120", "#SBATCH --mem-per-cpu=6G", "export OPENBLAS_NUM_THREADS=1",
                 f"python -m aci_jax.evo exp=quick run_dir='{run}'"):
        assert line in out, line
    code, out, _ = launch(capsys, "--cluster", "euler", "--dry-run", "--array-parallelism", "3", "train", *GRID,
                          f"hydra.sweep.dir={tmp_path / 's'}")
    assert code == 0 and "#SBATCH --array=0-3%3" in out and f"run folder {tmp_path / 's'}/env.agents" in out
    assert not run.exists() and not (tmp_path / "s").exists()


def test_sweep_member_names_and_their_run_dir_overrides(tmp_path):
    from aci_jax.cluster import _run_dir_override
    from aci_jax.sweep import grid, member_name, parse, swept_keys

    ov = ["exp=detection", "seed=0,1", "train.model_path=a/b,c/d", "+x=range(2)"]
    assert swept_keys(ov) == ["seed", "train.model_path", "x"]
    members = grid(ov)
    assert len(members) == 8 and members[0] == ["exp=detection", "seed=0", "train.model_path=a/b", "+x=0"]
    assert member_name(members[0], swept_keys(ov)) == "+x=0,seed=0,train.model_path=a_b"
    assert member_name(["exp=detection"], [], 3) == "job3"
    path = tmp_path / "seed=0,lr=[1,2]" / "it's"
    assert parse([_run_dir_override(path)])[0].value() == str(path)
    with pytest.raises(ConfigError, match="share run folders"):
        make_plan("train", ["exp=detection", "trainer.mode=test", "seed=0,0"])


# -- Slurm: real sbatch ----------------------------------------------------------------------------------

def _scontrol_jobs(job_id: str) -> list[dict]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def _wait(job_id: str, timeout: float = 300, until=None) -> list[dict]:
    """Poll until every task of the job is finished (or `until()`); a requeued job waiting for the
    begin time Slurm gives requeued jobs (2 minutes) is started now."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        jobs = _scontrol_jobs(job_id)
        for j in jobs:
            if j.get("JobState") == "PENDING" and j.get("Reason") == "BeginTime":
                subprocess.run(["scontrol", "update", f"JobId={j['JobId']}", "StartTime=now"], check=True)
        if until is not None and until():
            return jobs
        if jobs and all(j.get("JobState") in TERMINAL for j in jobs):
            assert until is None, f"job {job_id} ended before the awaited point: {jobs}"
            return jobs
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not done in {timeout} s: {_scontrol_jobs(job_id)}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not on PATH: no Slurm here (install: bash scripts/slurm-local.sh install)")
    # `start` is idempotent; the cluster is stopped at the end of the session (conftest), not here:
    # test modules on other pytest-xdist workers may still be using it.
    out = subprocess.run(["bash", "scripts/slurm-local.sh", "start"], cwd=REPO, capture_output=True, text=True, check=True)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = out.stdout.strip().split("=", 1)[1]
    yield
    os.environ.pop("SLURM_CONF") if before is None else os.environ.update(SLURM_CONF=before)


@pytest.fixture(scope="module")
def submitted(slurm, tmp_path_factory):
    """Every Slurm job of the module, submitted at once: {name: (job id, folder)}."""
    d = tmp_path_factory.mktemp("slurm")
    jobs = {}
    for name, argv in [("train", ["train", "exp=detection", *TINY, f"run_dir={d / 'train'}"]),
                       ("requeued", ["evo", *EVO, f"run_dir={d / 'requeued'}"]),
                       ("evo", ["evo", *EVO, f"run_dir={d / 'evo'}"]),
                       ("sweep", ["--array-parallelism", "2", "train", *GRID, f"hydra.sweep.dir={d / 'sweep'}"])]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert launcher.main(["--cluster", "localhost", *argv]) == 0, name
        ids = list(dict.fromkeys(re.findall(r"job (\d+)(?:_\d+)?:", buf.getvalue())))
        jobs[name] = (ids, d / name, buf.getvalue())
    _interrupt_twice(jobs["requeued"][0][0], d / "requeued")
    return jobs


def _interrupt_twice(jid: str, run: Path) -> None:
    """Requeue a running evolution twice in its middle: USR2, what Slurm sends `signal_delay_s`
    before a time limit and on preemption (submitit checkpoints and requeues the job), then
    `scontrol requeue` (an administrator's requeue, no signal)."""
    gens = run / "generations.jsonl"
    rows = lambda: len(gens.read_text().splitlines()) if gens.exists() else 0
    starts = lambda: len((run / "starts.jsonl").read_text().splitlines()) if (run / "starts.jsonl").exists() else 0
    _wait(jid, until=lambda: rows() >= 5)
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    _wait(jid, until=lambda: starts() >= 2 and rows() >= 12)
    subprocess.run(["scontrol", "requeue", jid], check=True)
    _wait(jid, until=lambda: starts() >= 3)


def test_submit_prints_job_ids_log_paths_and_run_folders(submitted):
    """First of the Slurm tests, so that the jobs run while the local tests below do."""
    (jid,), run, out = submitted["train"]
    assert f"job {jid}: run folder {run}" in out and f"log {run}/slurm/{jid}_0_log.out" in out
    assert f"err {run}/slurm/{jid}_0_log.err" in out and "partition=debug" in out
    (array, summary), sweep, out = submitted["sweep"]
    assert f"job {array}_0: run folder {sweep}/env.agents.agent.eyes.resolution=[1,1],seed=0" in out
    assert f"job {summary}: the sweep's summary" in out


# -- local: submitit's local executor, Hydra multirun, summaries --------------------------------------

def test_local_runs_the_same_job_here(capsys, tmp_path):
    code, out, _ = launch(capsys, "--cluster", "euler", "--local", "evo", "exp=quick", "trainer.mode=test",
                          f"run_dir={tmp_path}")
    assert code == 0, out
    assert "[evo] 3 generations" in out and len((tmp_path / "generations.jsonl").read_text().splitlines()) == 3
    assert list((tmp_path / "slurm").glob("*_log.out"))


def test_hydra_multirun_members_get_folders_named_by_swept_values_and_a_summary(tmp_path, capsys):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "aci_jax.train", "-m", *GRID, f"hydra.sweep.dir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = make_plan("train", [*GRID, f"hydra.sweep.dir={tmp_path}"])
    names = sorted(m.name for m in plan.members)  # the launcher's array names them the same
    assert names == sorted(p.name for p in tmp_path.iterdir() if (p / "fitness.json").is_file())
    assert "env.agents.agent.eyes.resolution=[1,1],seed=0" in names and len(names) == 4
    with open(tmp_path / "summary_groups.csv") as f:
        groups = list(csv.DictReader(f))
    assert [g["env.agents.agent.eyes.resolution"] for g in groups] == ["[1,1]", "[4,4]"]
    assert [(g["done"], g["fitness_n"], float(g["fitness_std"])) for g in groups] == [("2", "2", 0.0)] * 2
    assert float(groups[0]["fitness_mean"]) < float(groups[1]["fitness_mean"]) and (tmp_path / "summary.png").is_file()
    # on demand, for a partial sweep: a member not started yet is pending
    shutil.rmtree(tmp_path / names[0])
    assert sweep_main([str(tmp_path)]) == 0
    assert "3/4 members done" in capsys.readouterr().out
    assert ",pending," in (tmp_path / "summary.csv").read_text()


def test_a_sweep_with_a_bad_member_exits_2_before_any_folder(tmp_path):
    """`-m` with one bad value among the members: every member's config is validated when the sweep
    starts, so the error names that member and nothing is written (not even the sweep folder)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "aci_jax.train", "-m", "exp=detection", "trainer.mode=test",
                           "trainer.learning_rate=0.1,abc", f"hydra.sweep.dir={tmp_path / 's'}"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "config error: sweep member trainer.learning_rate=abc: trainer.learning_rate='abc'" in proc.stderr
    assert not (tmp_path / "s").exists()


# -- Slurm: waiting for the jobs ------------------------------------------------------------------

def test_requeued_evolution_ends_with_the_records_of_an_uninterrupted_one(submitted):
    (jid,), run, _ = submitted["requeued"]
    (job,) = _wait(jid)
    assert job["JobState"] == "COMPLETED" and int(job["Restarts"]) == 2
    starts = [json.loads(x) for x in (run / "starts.jsonl").read_text().splitlines()]
    assert [s["resumed"] for s in starts] == [False, True, True]
    log = next((run / "slurm").glob(f"{jid}_0_log.out")).read_text()
    assert "Caught signal SIGUSR2" in log and f"Requeued job {jid}" in log
    (ref,), ref_run, _ = submitted["evo"]
    assert _wait(ref)[0]["JobState"] == "COMPLETED"
    assert (run / "population.csv").read_text() == (ref_run / "population.csv").read_text()
    assert _strip(run / "generations.jsonl") == _strip(ref_run / "generations.jsonl")
    assert len(_strip(ref_run / "generations.jsonl")) == 30


def test_sweep_is_one_array_with_a_parallelism_limit_and_a_summary_job(submitted):
    (array, summary), sweep, out = submitted["sweep"]
    assert len(re.findall(rf"job {array}_\d:", out)) == 4
    scripts = [p.read_text() for p in (sweep / "slurm").glob("*_submission.sh")]
    assert sum("#SBATCH --array=0-3%2" in s for s in scripts) == 1
    assert sum(f"#SBATCH --dependency=afterany:{array}" in s for s in scripts) == 1
    tasks = _wait(array)
    assert len(tasks) == 4 and {t["JobState"] for t in tasks} == {"COMPLETED"}
    assert _wait(summary)[0]["JobState"] == "COMPLETED"
    members = sorted(p.name for p in sweep.iterdir() if (p / "fitness.json").is_file())
    assert members == sorted(m["name"] for m in json.loads((sweep / "sweep.json").read_text())["members"])
    summary_csv = (sweep / "summary.csv").read_text()
    assert summary_csv.count(",done,") == 4 and (sweep / "summary.png").is_file()


def test_tiny_training_job(submitted, capsys):
    (jid,), run, _ = submitted["train"]
    (job,) = _wait(jid, timeout=600)
    log = next((run / "slurm").glob(f"{jid}_0_log.out")).read_text()
    assert job["JobState"] == "COMPLETED", log[-3000:]
    assert json.loads((run / "fitness.json").read_text())["env_steps"] == 32
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and "[train] 1 iterations" in log
    code, out, _ = launch(capsys, "--cluster", "euler", "--dry-run", "eval", f"run_dir={run}", "eval.params=last")
    assert code == 0 and f"python -m aci_jax.eval eval.params=last run_dir={run}" in out

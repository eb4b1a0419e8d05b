"""The backend a command runs on: GPUs asked for (Slurm's or CUDA's variables) but a CPU-only JAX is
an error before any run folder exists, `allow_cpu=true` runs anyway, one backend line at start; no
"Failed to import warp" noise while a real import error still prints; the `cuda` extra matches the
pinned jax."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import aci_jax
from aci_jax import backend

REPO = Path(aci_jax.__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k not in (*backend.SLURM_GPU_VARS, "CUDA_VISIBLE_DEVICES")}


@pytest.mark.parametrize("env, asked", [
    ({}, None), ({"SLURM_JOB_GPUS": "0,1"}, "SLURM_JOB_GPUS=0,1"), ({"SLURM_GPUS_ON_NODE": "4"}, "SLURM_GPUS_ON_NODE=4"),
    ({"SLURM_STEP_GPUS": "0"}, "SLURM_STEP_GPUS=0"), ({"SLURM_GPUS_ON_NODE": "0"}, None),
    ({"CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES=0"), ({"CUDA_VISIBLE_DEVICES": ""}, None),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None), ({"CUDA_VISIBLE_DEVICES": "GPU-3f2a"}, "CUDA_VISIBLE_DEVICES=GPU-3f2a")])
def test_gpu_requested_reads_slurm_and_cuda_variables(env, asked):
    assert backend.gpu_requested(env) == asked


def _run(*args, **env):
    return subprocess.run([sys.executable, "-m", *args], env={**ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **env},
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_gpu_asked_but_cpu_jax_stops_before_the_run_folder(tmp_path):
    """One process per case would repeat JAX's start-up: the train command (test mode) covers the
    path every command shares (`runs.command_run_dir`); the message names the variable, what is
    installed and the fix."""
    run = tmp_path / "run"
    out = _run("aci_jax.train", "trainer.mode=test", f"run_dir={run}", SLURM_JOB_GPUS="0")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "SLURM_JOB_GPUS=0 says GPUs were allocated, but JAX runs on cpu" in out.stderr
    assert "jax 0.10" in out.stderr and "pip install -e '.[cuda]'" in out.stderr and "allow_cpu=true" in out.stderr
    assert not run.exists()  # Hydra's empty folder removed, nothing written
    ok = _run("aci_jax.train", "trainer.mode=test", f"run_dir={run}", "allow_cpu=true", CUDA_VISIBLE_DEVICES="0")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "[train] 1 × cpu (cpu) (allow_cpu: CUDA_VISIBLE_DEVICES=0 ignored)" in ok.stdout
    assert (run / "fitness.json").is_file()
    assert "Failed to import" not in ok.stdout + ok.stderr  # MJX's warp notice is silenced (no Warp here)


def test_backend_line_and_check_in_process(monkeypatch, capsys):
    for k in (*backend.SLURM_GPU_VARS, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(k, raising=False)
    backend._printed.clear()
    assert backend.check("evo") == "[evo] 1 × cpu (cpu)"
    backend.check("evo")
    assert capsys.readouterr().out.count("[evo] 1 × cpu (cpu)") == 1  # once per command and process
    monkeypatch.setenv("SLURM_STEP_GPUS", "0")
    with pytest.raises(aci_jax.ConfigError, match="SLURM_STEP_GPUS=0 says GPUs were allocated"):
        backend.check("evo")


def test_warp_notice_silenced_but_other_import_errors_print():
    """A fresh interpreter importing MJX through aci_jax prints nothing about warp; the filter
    passes any other line (here: the line a broken Warp install would print)."""
    code = "import aci_jax.envs.env, mujoco.mjx.warp as w; print('installed', w.WARP_INSTALLED)"
    out = subprocess.run([sys.executable, "-c", code], env={**ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "installed False", out.stdout + out.stderr
    assert backend._WARP_ABSENT.match("Failed to import warp: No module named 'warp'")
    assert backend._WARP_ABSENT.match("Failed to import mujoco_warp: No module named 'warp'")
    assert not backend._WARP_ABSENT.match("Failed to import warp: CUDA driver version is insufficient")


def test_cuda_extra_pins_the_same_jax():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    jax_pin = next(d for d in meta["dependencies"] if d.startswith("jax>="))
    for extra in ("cuda", "cuda13"):
        (dep,) = meta["optional-dependencies"][extra]
        assert dep.startswith("jax[cuda") and dep.split("]", 1)[1] == jax_pin.removeprefix("jax")


def test_gpu_check_smoke_runs_every_part(tmp_path):
    # Over 60 s (CI, fresh cache: ~3 min): it compiles the device check's env programs for two eyes and
    # its population programs (batched and one by one); that compile is what the smoke keeps from rotting.
    """benchmarks/gpu_check.py --smoke: the device check's code at tiny sizes on this CPU (so it cannot
    rot while no GPU is at hand): every part reports figures, at most 6 files come back."""
    import json

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out),
                        "--evo-dir", str(tmp_path / "evo")], env={**ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["device"]["platform"] == "cpu" and rep["device"]["warp"] is False
    assert [x["eye"] for x in rep["env_throughput"]] == ["10x10", "50x1"]
    assert all(x["env_steps_per_s"] > 0 and x["compile_s"] > 0 for x in rep["env_throughput"])
    assert "impl=warp not measured" in rep["env_throughput_note"]
    (pop,) = rep["population"]
    assert pop["population"] == 2 and pop["population_env_steps_per_s"] > 0 and pop["memory_per_individual_bytes"] > 0
    evo = rep["evolution"]
    assert evo["generations_finished"] >= 1 and evo["per_generation"][0]["best_fitness"] is not None
    assert not any(k.endswith("_error") for k in rep)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"gpu_check.json", "env_throughput.png", "population.png"} <= set(files)
    assert all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())

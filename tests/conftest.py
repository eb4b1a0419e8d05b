import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# The persistent compilation cache (aci_jax.compile_cache, on by default for the commands) is opt-in
# for the suite (ACI_JAX_TEST_CACHE=DIR): twice a CI run aborted inside XLA's executable serialisation
# when the cache wrote an entry (jax 0.10.2, CPU, before the cache took file locks; not reproducible on
# demand), and an abort takes the whole suite down with it. Off, the commands the tests start as
# subprocesses do not touch ~/.cache either; tests/test_compile_cache.py turns it on in its own folders.
if os.environ.get("ACI_JAX_TEST_CACHE"):
    os.environ["ACI_JAX_COMPILE_CACHE"] = os.environ["ACI_JAX_TEST_CACHE"]  # the subprocesses share it
    from aci_jax import compile_cache  # noqa: E402

    compile_cache.enable()
else:
    os.environ["ACI_JAX_COMPILE_CACHE"] = "0"


# The one-node Slurm of tests/test_launch.py: started by the first test module that needs it (on any
# pytest-xdist worker), stopped when the whole session ends, unless it was running before (.ci/run).
_SLURM = ["bash", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "slurm-local.sh")]


def _slurm_running() -> bool:
    import subprocess

    return subprocess.run([*_SLURM, "status"], capture_output=True).returncode == 0


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """In the controller, before any worker: start the one-node Slurm once when sbatch exists (two
    workers starting it at once restarted it under each other's jobs); the fixture's start is then a
    no-op."""
    if not hasattr(session.config, "workerinput"):  # the controller (or the only process)
        import shutil
        import subprocess

        session.config._slurm_was_running = _slurm_running()
        if shutil.which("sbatch") and not session.config._slurm_was_running:
            out = subprocess.run([*_SLURM, "start"], capture_output=True, text=True)
            if out.returncode == 0 and "=" in out.stdout:
                os.environ["SLURM_CONF"] = out.stdout.strip().split("=", 1)[1]


def pytest_sessionfinish(session, exitstatus):
    if not hasattr(session.config, "workerinput") and not getattr(session.config, "_slurm_was_running", True) \
            and _slurm_running():
        import subprocess

        subprocess.run([*_SLURM, "stop"], capture_output=True)

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Compile faster, run a little slower: two thirds of the tests' time was JAX compiling (tracing,
# lowering, XLA) their tiny programs (ACI_JAX_TEST_PROFILE below). LLVM at -O1 and XLA:CPU's loop
# emitters instead of its MLIR fusion emitters halve XLA's compile time; training-heavy tests run
# ~1.3× slower (measured 2026-12-07: the suite 24 -> 16 min; benchmarks/RESULTS.md, "Test suite"). The commands
# users run keep XLA's defaults; only the tests (and the subprocesses they start) take these.
# ACI_JAX_TEST_XLA_FLAGS replaces them ('' for XLA's defaults).
_TEST_XLA_FLAGS = os.environ.get("ACI_JAX_TEST_XLA_FLAGS",
                                 "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false")
if _TEST_XLA_FLAGS.strip():
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_TEST_XLA_FLAGS}".strip()

import pytest  # noqa: E402

# The persistent compilation cache (aci_jax.compile_cache) under the suite too: the tests build the
# same tiny trainings again and again (in this process, in the commands they start as subprocesses,
# in two processes of one evolution), and each identical program is compiled once per suite, then
# read back. Default `.test-xla-cache/` in the checkout (kept between local runs; a fresh clone, as
# CI, starts empty); ACI_JAX_TEST_CACHE=DIR elsewhere, =0 off. The subprocesses share it through
# ACI_JAX_COMPILE_CACHE. (A CI worker that died inside XLA while the cache was on had run out of
# memory mappings, not of cache: see _release_compiled_programs below.)
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_cache = os.environ.get("ACI_JAX_TEST_CACHE", "").strip() or os.path.join(_REPO, ".test-xla-cache")
if _cache.lower() not in ("0", "off", "false", "no"):
    os.environ["ACI_JAX_COMPILE_CACHE"] = _cache
    from aci_jax import compile_cache  # noqa: E402

    compile_cache.enable()
else:
    os.environ["ACI_JAX_COMPILE_CACHE"] = "0"
    # JAX's own switch too: on (its default), every compilation still computes a cache key
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"


# The one-node Slurm of tests/test_launch.py: started by the first test module that needs it (on any
# pytest-xdist worker), stopped when the whole session ends, unless it was running before (.ci/run).
_SLURM = ["bash", os.path.join(_REPO, "scripts", "slurm-local.sh")]


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


def _mappings() -> int:
    try:
        with open(f"/proc/{os.getpid()}/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _release() -> None:
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module: drop JAX's compiled programs. Every XLA:CPU executable holds ~20
    memory mappings until its cache entry goes, and a worker that runs half the suite's modules
    passes the kernel's vm.max_map_count (65530) — XLA then aborts inside a compilation and takes
    the worker down (CI, 2026-12-07: always in the same late test). Programs a module's fixtures
    still hold are recompiled if another module needs them; none is shared across modules."""
    yield
    before = _mappings()
    _release()
    if os.environ.get("ACI_JAX_TEST_MAPPINGS"):  # how close a module came (for measuring the suite)
        with open(os.environ["ACI_JAX_TEST_MAPPINGS"], "a") as f:
            f.write(f"{os.getpid()} {before} -> {_mappings()}\n")


@pytest.fixture(autouse=True)
def _mapping_guard():
    """Within a module too: a test that leaves the process past half the mapping limit drops the
    compiled programs at once (measured 2026-12-07: one module reached 41k of 65,530)."""
    yield
    if _mappings() > 32000:
        _release()


# ACI_JAX_TEST_PROFILE=FILE: per test, the seconds JAX spent tracing, lowering and compiling in this
# process (from JAX's compile log), appended as JSON lines: where the suite's time goes.
if os.environ.get("ACI_JAX_TEST_PROFILE"):
    import json
    import logging
    import re
    import time

    class _CompileLog(logging.Handler):
        _pat = re.compile(r"Finished (tracing|jaxpr to MLIR|XLA compilation)\b.* in ([0-9.]+) sec")

        def __init__(self):
            super().__init__(logging.DEBUG)
            self.acc = {}

        def emit(self, record):
            m = self._pat.search(record.getMessage())
            if m:
                self.acc[m.group(1)] = self.acc.get(m.group(1), 0.0) + float(m.group(2))

    _handler = _CompileLog()

    @pytest.fixture(autouse=True, scope="session")
    def _compile_log():
        import jax

        jax.config.update("jax_log_compiles", True)
        for name in ("jax._src.dispatch", "jax._src.interpreters.pxla", "jax._src.pjit"):
            lg = logging.getLogger(name)
            lg.addHandler(_handler)
            lg.setLevel(logging.DEBUG)
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        _handler.acc = {}
        t0 = time.perf_counter()
        yield
        with open(os.environ["ACI_JAX_TEST_PROFILE"], "a") as f:
            f.write(json.dumps({"test": item.nodeid, "pid": os.getpid(), "wall": time.perf_counter() - t0,
                                **_handler.acc}) + "\n")


# Longest files first: pytest-xdist's --dist loadfile hands whole files to whichever worker is free,
# in collection order, so a long file collected last (alphabetically test_train.py) keeps one worker
# busy while the other idles. Measured per-file seconds (2026-12-07, fresh cache, both workers'
# sum 1,803 s); files not listed keep their order after these.
_LONGEST_FIRST = ("test_evo.py", "test_train.py", "test_distributed.py", "test_packed.py", "test_ppo.py",
                  "test_runs.py", "test_env.py", "test_backend.py", "test_launch.py", "test_brax_env.py",
                  "test_optics.py", "test_movers.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order in a file

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Envs built from equal configs compile to the same program: share compilations across the tests of
# one run (and their subprocesses). One cache per run: two pytest runs writing one cache at once
# aborted inside JAX's cache write once; set ACI_JAX_TEST_CACHE to share a cache across runs.
if os.environ.get("ACI_JAX_TEST_CACHE"):
    _cache = os.environ["ACI_JAX_TEST_CACHE"]
else:
    import atexit
    import shutil

    _cache = tempfile.mkdtemp(prefix="aci_jax_test_jax_cache_")
    atexit.register(shutil.rmtree, _cache, True)
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# The persistent compilation cache is opt-in (ACI_JAX_TEST_CACHE=DIR): twice a CI run aborted inside
# XLA's executable serialisation when the cache wrote an entry (jax 0.10.2, CPU; not reproducible on
# demand), and an abort takes the whole suite down with it.
if os.environ.get("ACI_JAX_TEST_CACHE"):
    # in the environment, so the tests' subprocesses share it
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["ACI_JAX_TEST_CACHE"]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1"
    jax.config.update("jax_compilation_cache_dir", os.environ["ACI_JAX_TEST_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

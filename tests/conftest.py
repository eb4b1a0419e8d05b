import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Envs built from equal configs compile to the same program: share compilations across tests.
jax.config.update("jax_compilation_cache_dir", os.environ.get(
    "ACI_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "aci_jax_test_jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

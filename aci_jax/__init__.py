"""aci_jax: embodied agents that evolve their eyes, on JAX/MJX."""

from aci_jax.backend import quiet_warp_import

quiet_warp_import()  # before anything imports MJX: no "Failed to import warp" noise (aci_jax.backend)

from aci_jax.config import ConfigError, load_config  # noqa: E402

__all__ = ["ConfigError", "load_config", "make_env"]


def make_env(cfg, eval: bool = False):
    """The batched-ready env of a composed config (see `aci_jax.envs.env.Env`)."""
    from aci_jax.envs.env import make_env as _make_env

    return _make_env(cfg, eval=eval)

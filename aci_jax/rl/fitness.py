"""Fitness of an individual from its evaluation returns, as ACI: drop 1.5-IQR outliers, then the
median of the top 25 %; and test mode's synthetic fitness of the eye parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def remove_outliers(returns, k: float = 1.5) -> np.ndarray:
    """The finite returns within [Q1 - k·IQR, Q3 + k·IQR]."""
    r = np.asarray(returns, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return r
    q1, q3 = np.percentile(r, [25, 75])
    iqr = q3 - q1
    return r[(r >= q1 - k * iqr) & (r <= q3 + k * iqr)]


def fitness(returns) -> float:
    """Median of the returns at or above the 75th percentile, after outlier removal (-inf: none)."""
    r = remove_outliers(returns)
    if r.size == 0:
        return float("-inf")
    return float(np.median(r[r >= np.percentile(r, 75)]))


# Test mode's optimum: ACI's published detection result, three forward eyes of 14 pixels across, one
# high ("flatland": 42 pixels, within ACI's 50-pixel budget), with the initial 45° fov.
TEST_OPTIMUM = {"num_eyes": (1.0, 3.0), "resolution": (14.0, 1.0), "fov": (45.0, 45.0)}


def synthetic_fitness(eyes) -> jax.Array:
    """Test mode (`trainer.mode=test`): a smooth function of the eye parameters, no training, so the
    evolution loop can be tested in seconds. Highest (0) at TEST_OPTIMUM; minus the squared log2
    distances of eye counts and resolutions and the squared relative fov error. Vmaps over EyeParams."""
    log_err = lambda x, opt: jnp.sum((jnp.log2(jnp.asarray(x, jnp.float32)) - jnp.log2(jnp.array(opt))) ** 2)
    fov_err = jnp.sum(((eyes.fov - jnp.array(TEST_OPTIMUM["fov"])) / jnp.array(TEST_OPTIMUM["fov"])) ** 2)
    return -(log_err(eyes.num_eyes, TEST_OPTIMUM["num_eyes"]) + log_err(eyes.resolution, TEST_OPTIMUM["resolution"])
             + fov_err)

"""BraxEnv: the env as a brax Env steps exactly like the vmapped env, with flat observations."""

import jax
import numpy as np
import pytest

import aci_jax
from aci_jax.envs.brax_env import EPISODE_METRICS, BraxEnv
from aci_jax.rl import ActorCritic, NetworkConfig

N = 3
OVERRIDES = ["env.agents.agent.eyes.resolution=[2,2]", "env.render.supersample=1", "env.max_episode_steps=4",
             "env.frame_stack=2"]


@pytest.fixture(scope="module")
def envs():
    env = aci_jax.make_env(aci_jax.load_config("detection", OVERRIDES))
    return env, BraxEnv(env)


def test_steps_equal_the_vmapped_env(envs):
    """Same keys and actions: same rewards, dones, metrics and obs, across auto-resets (episodes of 4 steps)."""
    env, benv = envs
    keys = jax.random.split(jax.random.PRNGKey(0), N)
    vreset = jax.jit(jax.vmap(env.reset))
    vstep, bstep = jax.jit(jax.vmap(env.step)), jax.jit(benv.step)
    s, b = vreset(keys), jax.jit(benv.reset)(keys)
    assert b.obs.shape == (N, benv.observation_size)
    resets = 0.0
    for k in jax.random.split(jax.random.PRNGKey(1), 9):
        a = jax.random.uniform(k, (N, env.action_size), minval=-1.5, maxval=1.5)
        s, b = vstep(s, a), bstep(b, a)
        np.testing.assert_array_equal(b.reward, s.reward)
        np.testing.assert_array_equal(b.done, s.done)
        np.testing.assert_array_equal(b.info["truncation"], s.info["truncation"])
        np.testing.assert_array_equal(b.info["episode_done"], s.metrics["episode_done"])
        for m in EPISODE_METRICS:
            np.testing.assert_array_equal(b.info["episode_metrics"][m], s.metrics[m])
        np.testing.assert_array_equal(b.obs, benv.flatten_obs(s.obs))
        resets += float(s.metrics["episode_done"].sum())
    assert resets >= N  # every env auto-reset at least once


def test_flat_obs_is_the_flatten_encoders_input(envs):
    """A flatten-encoder network with a first layer over the flat vector sees the same numbers."""
    env, benv = envs
    obs = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(2), N)).obs
    flat = benv.flatten_obs(obs)
    net = ActorCritic(tuple(env.eye_names), env.buffer, NetworkConfig(encoder="flatten", hidden=(8,)), env.action_size)
    params = net.init(jax.random.PRNGKey(0), jax.tree.map(lambda x: x[0], obs), env.default_eyes)
    assert params["params"]["pi_0"]["kernel"].shape[0] == benv.observation_size
    dense = params["params"]["pi_0"]
    first = net.apply(params, obs, env.default_eyes, capture_intermediates=True,
                      mutable=["intermediates"])[1]["intermediates"]["pi_0"]["__call__"][0]
    np.testing.assert_allclose(first, flat @ dense["kernel"] + dense["bias"], rtol=1e-5, atol=1e-5)
